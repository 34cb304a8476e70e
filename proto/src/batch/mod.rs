//! The record batch: header layout, records, compression, reading and building.

pub(crate) mod attributes;
pub(crate) mod builder;
pub(crate) mod compression;
pub(crate) mod crc;
pub(crate) mod cursor;
pub(crate) mod header;
pub(crate) mod layout;
pub(crate) mod reader;
pub(crate) mod record;
pub(crate) mod records;
pub(crate) mod varint;
