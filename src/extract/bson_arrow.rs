//! BSON documents to Arrow record batches (being written).
