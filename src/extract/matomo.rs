//! Matomo tables from MariaDB (being written).
