//! mongodump folders and archives (being written).
