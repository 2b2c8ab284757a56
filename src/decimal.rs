//! The crate's one decimal parser: `-12.50`, `1.5E+3`, `.5`, `5.` -> sign, digits and a
//! decimal exponent, then a scaled integer for a `NUMERIC(p,s)` (i128 for Decimal128, i256
//! for Decimal256), exact or rounded half away from zero like PostgreSQL's numeric cast.
//!
//! Nothing here loops or allocates in proportion to an exponent: `1e999999999999` and
//! `0e-999999999` cost what `1e3` costs, exponents saturate instead of overflowing, and a
//! value beyond the target is an error, never a wrap. [`Decimal::parse`] takes the strict
//! syntax (what MariaDB and BSON's Decimal128 print); [`Numeric::parse_pg`] adds what
//! PostgreSQL's `numeric` input also takes (surrounding whitespace, `NaN`, `Infinity`) and
//! checks its storage limits.

use arrow::datatypes::i256;

/// Exponents are kept within ±this (far beyond any representable value), so that sums with
/// lengths and scales never overflow an `i64`.
const EXPONENT_CAP: i64 = 1 << 40;

/// A finite decimal number as written: `digits` (those of the integer and fraction parts,
/// without the point) times ten to the power `exponent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decimal<'a> {
    pub negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    /// The written exponent (`e` part), saturated to ±[`EXPONENT_CAP`].
    exponent: i64,
}

/// Why a text is not a decimal for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecimalError {
    /// Not a number at all.
    Syntax,
    /// More integer digits than the target holds.
    Overflow,
    /// Digits beyond the target's scale, when rounding is not allowed.
    Inexact,
}

/// What to do with digits beyond the scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rounding {
    /// Refuse them (a lossless conversion is required).
    Exact,
    /// Round half away from zero, as PostgreSQL does when it casts to `NUMERIC(p,s)`.
    HalfAwayFromZero,
}

/// A scaled integer and whether digits were dropped to get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scaled<T> {
    pub value: T,
    pub rounded: bool,
}

impl<'a> Decimal<'a> {
    /// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`, nothing around it.
    pub(crate) fn parse(text: &'a [u8]) -> Result<Decimal<'a>, DecimalError> {
        let (negative, rest) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, text),
        };
        let (mantissa, exponent) = match rest.iter().position(|c| matches!(c, b'e' | b'E')) {
            Some(e) => (&rest[..e], parse_exponent(&rest[e + 1..])?),
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
            Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
            None => (mantissa, &mantissa[mantissa.len()..]),
        };
        if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return Err(DecimalError::Syntax);
        }
        Ok(Decimal {
            negative,
            int,
            frac,
            exponent,
        })
    }

    /// The digits without leading zeros (empty for zero), and the power of ten of the last.
    fn significant(&self) -> (Digits<'a>, i64) {
        let lead = self.int.iter().take_while(|&&c| c == b'0').count();
        let (int, frac) = if lead < self.int.len() {
            (&self.int[lead..], self.frac)
        } else {
            let lead_frac = self.frac.iter().take_while(|&&c| c == b'0').count();
            (&self.int[..0], &self.frac[lead_frac..])
        };
        (Digits { int, frac }, self.exponent - len_i64(self.frac))
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.significant().0.is_empty()
    }

    /// The value times 10^scale as an integer of type `T`.
    pub(crate) fn to_scaled<T: Accumulator>(
        self,
        scale: u32,
        rounding: Rounding,
    ) -> Result<Scaled<T>, DecimalError> {
        let (digits, power) = self.significant();
        if digits.is_empty() {
            return Ok(Scaled {
                value: T::ZERO,
                rounded: false,
            });
        }
        // value * 10^scale = digits * 10^shift
        let shift = power + i64::from(scale);
        let n = digits.len();
        let (kept, dropped, zeros) = if shift >= 0 {
            (n, 0, shift)
        } else {
            let drop = usize::try_from(-shift).unwrap_or(usize::MAX);
            (n.saturating_sub(drop), drop, 0)
        };
        if i64::try_from(kept)
            .unwrap_or(i64::MAX)
            .saturating_add(zeros)
            > T::MAX_DIGITS
        {
            return Err(DecimalError::Overflow);
        }
        let mut value = T::ZERO;
        for d in digits.iter().take(kept) {
            value = value.push_digit(d).ok_or(DecimalError::Overflow)?;
        }
        for _ in 0..zeros {
            value = value.push_digit(0).ok_or(DecimalError::Overflow)?;
        }
        let mut rounded = false;
        if dropped > 0 {
            // The first dropped digit is a real one only when fewer digits were dropped than
            // written; otherwise the value is below half a unit of the scale (or exactly
            // the leading digit).
            let first = if dropped <= n { digits.get(kept) } else { 0 };
            rounded = digits.iter().skip(kept).any(|d| d != 0);
            if rounded && rounding == Rounding::Exact {
                return Err(DecimalError::Inexact);
            }
            if first >= 5 {
                value = value.add_one().ok_or(DecimalError::Overflow)?;
            }
        }
        if self.negative {
            value = value.negate().ok_or(DecimalError::Overflow)?;
        }
        Ok(Scaled { value, rounded })
    }

    /// Whether PostgreSQL's `numeric` can store it: at most 131072 digits before the point
    /// and 16383 after it (as written, trailing zeros included).
    pub(crate) fn fits_pg_numeric(&self) -> bool {
        let scale = len_i64(self.frac) - self.exponent;
        if scale > 16_383 {
            return false;
        }
        let (digits, power) = self.significant();
        digits.is_empty() || power + len_i64_usize(digits.len()) <= 131_072
    }

    /// PostgreSQL's canonical text of the value (`numeric_out`): no exponent, no leading
    /// zeros, as many decimals as written (`1.05E+3` -> `1050`, `1e-7` -> `0.0000001`).
    /// Only for values that [`fit`](Self::fits_pg_numeric).
    pub(crate) fn to_pg_text(self) -> String {
        let (digits, power) = self.significant();
        let scale = usize::try_from(len_i64(self.frac) - self.exponent).unwrap_or(0);
        let mut out = String::new();
        if digits.is_empty() {
            out.push('0');
            if scale > 0 {
                out.push('.');
                out.extend(std::iter::repeat_n('0', scale));
            }
            return out;
        }
        if self.negative {
            out.push('-');
        }
        // value = digits * 10^power, printed with `scale` decimals (scale >= -power).
        let n = digits.len();
        let int_len = i64::try_from(n).unwrap_or(i64::MAX).saturating_add(power);
        if int_len <= 0 {
            out.push('0');
        } else {
            for i in 0..usize::try_from(int_len).unwrap_or(0) {
                out.push(char::from(b'0' + if i < n { digits.get(i) } else { 0 }));
            }
        }
        if scale > 0 {
            out.push('.');
            for k in 0..scale {
                // Decimal k+1 is the digit at index int_len + k.
                let index = int_len + i64::try_from(k).unwrap_or(i64::MAX);
                let digit = usize::try_from(index)
                    .ok()
                    .filter(|i| *i < n)
                    .map_or(0, |i| digits.get(i));
                out.push(char::from(b'0' + digit));
            }
        }
        out
    }
}

/// The integer and fraction digits as one sequence, without copying them.
#[derive(Debug, Clone, Copy)]
struct Digits<'a> {
    int: &'a [u8],
    frac: &'a [u8],
}

impl Digits<'_> {
    fn len(&self) -> usize {
        self.int.len() + self.frac.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, i: usize) -> u8 {
        let c = if i < self.int.len() {
            self.int[i]
        } else {
            self.frac.get(i - self.int.len()).copied().unwrap_or(b'0')
        };
        c - b'0'
    }

    fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        self.int.iter().chain(self.frac).map(|c| c - b'0')
    }
}

fn len_i64(digits: &[u8]) -> i64 {
    len_i64_usize(digits.len())
}

fn len_i64_usize(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX).min(EXPONENT_CAP)
}

/// `[+-]? digits`, saturated to ±[`EXPONENT_CAP`].
fn parse_exponent(text: &[u8]) -> Result<i64, DecimalError> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(DecimalError::Syntax);
    }
    let mut e: i64 = 0;
    for &c in digits {
        e = (e * 10 + i64::from(c - b'0')).min(EXPONENT_CAP);
    }
    Ok(if negative { -e } else { e })
}

/// A PostgreSQL `numeric` input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Numeric<'a> {
    Finite(Decimal<'a>),
    NaN,
    Infinity,
    NegInfinity,
}

impl<'a> Numeric<'a> {
    /// What `numeric_in` reads: surrounding whitespace, `NaN`, `[+-]Infinity`/`inf` in any
    /// case, or a decimal within numeric's storage limits.
    pub(crate) fn parse_pg(text: &'a str) -> Result<Numeric<'a>, DecimalError> {
        let t = trim_pg_space(text);
        let (sign, word) = match t.as_bytes().first() {
            Some(b'-') => (-1, &t[1..]),
            Some(b'+') => (1, &t[1..]),
            _ => (0, t),
        };
        if word.eq_ignore_ascii_case("nan") && sign == 0 {
            return Ok(Numeric::NaN);
        }
        if word.eq_ignore_ascii_case("infinity") || word.eq_ignore_ascii_case("inf") {
            return Ok(if sign < 0 {
                Numeric::NegInfinity
            } else {
                Numeric::Infinity
            });
        }
        let d = Decimal::parse(t.as_bytes())?;
        if !d.fits_pg_numeric() {
            return Err(DecimalError::Overflow);
        }
        Ok(Numeric::Finite(d))
    }

    /// PostgreSQL's text of a special value.
    pub(crate) fn special_text(&self) -> Option<&'static str> {
        match self {
            Numeric::Finite(_) => None,
            Numeric::NaN => Some("NaN"),
            Numeric::Infinity => Some("Infinity"),
            Numeric::NegInfinity => Some("-Infinity"),
        }
    }
}

/// Trims what PostgreSQL's input functions skip around a value (C `isspace`).
pub(crate) fn trim_pg_space(text: &str) -> &str {
    text.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
}

/// Integer types a scaled decimal is built in.
pub(crate) trait Accumulator: Copy {
    const ZERO: Self;
    /// Decimal digits of the largest value (a value with more cannot fit).
    const MAX_DIGITS: i64;
    /// `self * 10 + digit`, unless it overflows.
    fn push_digit(self, digit: u8) -> Option<Self>;
    fn add_one(self) -> Option<Self>;
    fn negate(self) -> Option<Self>;
}

impl Accumulator for i128 {
    const ZERO: i128 = 0;
    const MAX_DIGITS: i64 = 39;
    fn push_digit(self, digit: u8) -> Option<i128> {
        self.checked_mul(10)?.checked_add(i128::from(digit))
    }
    fn add_one(self) -> Option<i128> {
        self.checked_add(1)
    }
    fn negate(self) -> Option<i128> {
        self.checked_neg()
    }
}

impl Accumulator for i256 {
    const ZERO: i256 = i256::ZERO;
    const MAX_DIGITS: i64 = 77;
    fn push_digit(self, digit: u8) -> Option<i256> {
        self.checked_mul(i256::from_i128(10))?
            .checked_add(i256::from_i128(i128::from(digit)))
    }
    fn add_one(self) -> Option<i256> {
        self.checked_add(i256::ONE)
    }
    fn negate(self) -> Option<i256> {
        self.checked_neg()
    }
}

/// Whether a scaled Decimal128 value has at most `precision` digits (p <= 38).
pub(crate) fn fits_precision(value: i128, precision: u32) -> bool {
    10_i128
        .checked_pow(precision)
        .is_none_or(|limit| value.unsigned_abs() < limit.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(text: &str, scale: u32, rounding: Rounding) -> Result<(i128, bool), DecimalError> {
        Decimal::parse(text.as_bytes())?
            .to_scaled::<i128>(scale, rounding)
            .map(|s| (s.value, s.rounded))
    }

    fn exact(text: &str, scale: u32) -> Result<i128, DecimalError> {
        scaled(text, scale, Rounding::Exact).map(|(v, _)| v)
    }

    fn round(text: &str, scale: u32) -> Result<i128, DecimalError> {
        scaled(text, scale, Rounding::HalfAwayFromZero).map(|(v, _)| v)
    }

    #[test]
    fn syntax() {
        for ok in [
            "0", "-0", "+1", ".5", "5.", "1.5E+3", "1e-3", "007.500", "1E0",
        ] {
            assert!(Decimal::parse(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "-", "+.", "e5", "1e", "1e+", "1.2.3", "1,5", " 1", "1 ", "0x10", "1_000",
            "--1", "1e5.5", "NaN", "١",
        ] {
            assert_eq!(
                Decimal::parse(bad.as_bytes()),
                Err(DecimalError::Syntax),
                "{bad}"
            );
        }
    }

    #[test]
    fn exact_values() {
        assert_eq!(exact("12.5", 2), Ok(1250));
        assert_eq!(exact("-0.01", 2), Ok(-1));
        assert_eq!(exact("1.5E+3", 2), Ok(150_000));
        assert_eq!(exact("150000e-5", 2), Ok(150));
        assert_eq!(exact(".5", 1), Ok(5));
        assert_eq!(
            exact("1.500", 1),
            Ok(15),
            "trailing zeros are not lost digits"
        );
        assert_eq!(exact("1.005", 2), Err(DecimalError::Inexact));
        assert_eq!(exact("-0", 0), Ok(0));
    }

    #[test]
    fn rounding_is_half_away_from_zero_like_postgresql() {
        assert_eq!(
            scaled("37.123456", 2, Rounding::HalfAwayFromZero),
            Ok((3712, true))
        );
        assert_eq!(round("0.125", 2), Ok(13));
        assert_eq!(round("-0.125", 2), Ok(-13));
        assert_eq!(round("0.124999", 2), Ok(12));
        assert_eq!(round("9.995", 2), Ok(1000));
        assert_eq!(round("0.005", 2), Ok(1));
        assert_eq!(round("0.0049", 2), Ok(0));
        assert_eq!(round("5e-3", 2), Ok(1));
        assert_eq!(round("5e-4", 2), Ok(0));
        assert_eq!(round("1e-400", 2), Ok(0));
        assert_eq!(
            scaled("1.50", 1, Rounding::HalfAwayFromZero),
            Ok((15, false))
        );
    }

    /// Issue 9.10: `exponent - fraction length + scale` was unchecked i32 arithmetic, and the
    /// shift was a loop of up to 2^31 steps.
    #[test]
    fn huge_exponents_neither_overflow_nor_loop() {
        let started = std::time::Instant::now();
        assert_eq!(exact("1e2147483647", 2), Err(DecimalError::Overflow));
        assert_eq!(exact("1e-2147483648", 2), Err(DecimalError::Inexact));
        assert_eq!(round("1e-2147483648", 2), Ok(0));
        assert_eq!(exact("0e2147483647", 2), Ok(0));
        assert_eq!(exact("0e-2147483648", 2), Ok(0));
        assert_eq!(
            exact("1e99999999999999999999999999", 0),
            Err(DecimalError::Overflow)
        );
        assert_eq!(round("-1e-99999999999999999999999999", 0), Ok(0));
        assert_eq!(
            exact(&format!("1.{}e2147483647", "0".repeat(5000)), 0),
            Err(DecimalError::Overflow)
        );
        assert!(started.elapsed().as_secs() < 2, "no loop over the exponent");
    }

    #[test]
    fn limits_of_i128_and_i256() {
        let max = i128::MAX.to_string();
        assert_eq!(exact(&max, 0), Ok(i128::MAX));
        assert_eq!(exact(&format!("-{max}"), 0), Ok(-i128::MAX));
        assert_eq!(exact(&format!("{max}0"), 0), Err(DecimalError::Overflow));
        assert_eq!(
            exact("170141183460469231731687303715884105728", 0),
            Err(DecimalError::Overflow)
        );
        let d = Decimal::parse(b"1e76").unwrap();
        assert!(d.to_scaled::<i256>(0, Rounding::Exact).is_ok());
        assert_eq!(
            d.to_scaled::<i256>(1, Rounding::Exact).map(|s| s.value),
            Err(DecimalError::Overflow)
        );
        assert!(fits_precision(99_999, 5) && !fits_precision(100_000, 5));
        assert!(fits_precision(-99_999, 5) && !fits_precision(-100_000, 5));
    }

    #[test]
    fn postgresql_input_and_limits() {
        assert_eq!(Numeric::parse_pg(" NaN "), Ok(Numeric::NaN));
        assert_eq!(Numeric::parse_pg("-inf"), Ok(Numeric::NegInfinity));
        assert_eq!(Numeric::parse_pg("+Infinity"), Ok(Numeric::Infinity));
        assert_eq!(Numeric::parse_pg("-nan"), Err(DecimalError::Syntax));
        assert!(matches!(
            Numeric::parse_pg("\t+.5e1\n"),
            Ok(Numeric::Finite(_))
        ));
        // Checked against PostgreSQL 15: these are its storage limits.
        for ok in ["1e131071", "1e-16383", "0e999999999", "9.5e131071"] {
            assert!(Numeric::parse_pg(ok).is_ok(), "{ok}");
        }
        for overflow in [
            "1e131072",
            "1e-16384",
            "1.5e-16383",
            "0e-20000",
            "1e2147483647",
        ] {
            assert_eq!(
                Numeric::parse_pg(overflow),
                Err(DecimalError::Overflow),
                "{overflow}"
            );
        }
    }

    #[test]
    fn postgresql_text() {
        let text = |t: &str| Decimal::parse(t.as_bytes()).unwrap().to_pg_text();
        assert_eq!(text("1.05E+3"), "1050");
        assert_eq!(text("1e-7"), "0.0000001");
        assert_eq!(text("12.50"), "12.50");
        assert_eq!(text("-0.00"), "0.00");
        assert_eq!(text("007.5"), "7.5");
        assert_eq!(text("-1.5e-1"), "-0.15");
        assert_eq!(text("123.456e1"), "1234.56");
        assert_eq!(text("5."), "5");
        assert_eq!(text("0e5"), "0");
    }

    /// Property: for random digit strings, exponents and scales, the scaled value (when it
    /// fits) is what exact big-number arithmetic on the digits gives, and rounding never moves
    /// the value by half a unit of the scale or more.
    #[test]
    fn random_values_match_a_reference() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let int_len = usize::try_from(next() % 25).unwrap();
            let frac_len = usize::try_from(next() % 25).unwrap();
            let digit = |n: u64| char::from(b'0' + u8::try_from(n % 10).unwrap());
            let int: String = (0..int_len).map(|_| digit(next())).collect();
            let frac: String = (0..frac_len).map(|_| digit(next())).collect();
            if int.is_empty() && frac.is_empty() {
                continue;
            }
            let exponent: i64 = match next() % 4 {
                0 => 0,
                1 => i64::try_from(next() % 41).unwrap() - 20,
                2 => i64::try_from(next() % 2_000_000_001).unwrap() - 1_000_000_000,
                _ => i64::try_from(next() % 81).unwrap() - 40,
            };
            let scale = u32::try_from(next() % 39).unwrap();
            let negative = next() % 2 == 0;
            let text = format!(
                "{}{int}{}{frac}e{exponent}",
                if negative { "-" } else { "" },
                if frac.is_empty() && next() % 2 == 0 {
                    ""
                } else {
                    "."
                }
            );
            let reference = reference_scaled(
                &format!("{int}{frac}"),
                exponent - i64::try_from(frac_len).unwrap() + i64::from(scale),
            );
            let got = Decimal::parse(text.as_bytes())
                .unwrap()
                .to_scaled::<i128>(scale, Rounding::HalfAwayFromZero);
            match reference {
                Some((magnitude, rounded)) => {
                    let want = if negative { -magnitude } else { magnitude };
                    assert_eq!(
                        got,
                        Ok(Scaled {
                            value: want,
                            rounded
                        }),
                        "{text} at scale {scale}"
                    );
                }
                None => assert_eq!(got, Err(DecimalError::Overflow), "{text} at scale {scale}"),
            }
        }
    }

    /// digits * 10^shift rounded half up, by long arithmetic on the digit string: Some((value,
    /// rounded)) when it fits an i128.
    fn reference_scaled(digits: &str, shift: i64) -> Option<(i128, bool)> {
        let digits = digits.trim_start_matches('0');
        if digits.is_empty() {
            return Some((0, false));
        }
        if shift >= 0 {
            if i64::try_from(digits.len()).unwrap() + shift > 45 {
                return None;
            }
            let text = format!("{digits}{}", "0".repeat(usize::try_from(shift).unwrap()));
            return text.parse::<i128>().ok().map(|v| (v, false));
        }
        let drop = usize::try_from(-shift).unwrap();
        if drop > digits.len() {
            // Below a tenth of the unit: rounds to zero, and some digit was dropped.
            return Some((0, true));
        }
        let (kept, dropped) = if drop == digits.len() {
            ("", digits.to_string())
        } else {
            (
                &digits[..digits.len() - drop],
                digits[digits.len() - drop..].to_string(),
            )
        };
        let base: i128 = if kept.is_empty() {
            0
        } else {
            kept.parse().ok()?
        };
        let up = dropped.as_bytes()[0] >= b'5';
        let rounded = dropped.bytes().any(|c| c != b'0');
        let value = if up { base.checked_add(1)? } else { base };
        Some((value, rounded))
    }
}
