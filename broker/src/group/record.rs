//! The records a coordinator writes to `__consumer_offsets`, in its own layouts. The first
//! field of a key is its version, which also tells the two kinds apart (as Kafka's keys do):
//!
//! - an **offset record**: key `(1, group, topic, partition)`, value `(1, offset, metadata,
//!   commit time)`; a tombstone deletes the offset;
//! - a **group record**: key `(2, group)`, value `(2, generation, protocol, leader, members)`
//!   with each member's id, client id and host, session and rebalance timeouts, subscription
//!   and assignment. It is written when a generation's assignments are handed out and when
//!   the group becomes empty; a tombstone (the group was deleted) forgets it. A coordinator
//!   that takes the partition over (or a restarted broker) restores the members from it, so
//!   they keep their ids, generation and partitions, and a newcomer cannot be handed their
//!   partitions before they rejoin or time out.
//!
//! Compaction keeps the latest record of each key.

use bytes::{Bytes, BytesMut};
use sluice_proto::protocol::{Reader, Writer};

use super::limits::{ASSIGNMENT_BYTES_MAX, MEMBER_METADATA_BYTES_MAX, MEMBERS_PER_GROUP_MAX};
use super::state::{Committed, GroupRecord, PersistedMember};

/// Version of the offset record key and value layouts.
const OFFSET_RECORD_VERSION: u16 = 1;
/// Version of the group record key and value layouts.
const GROUP_RECORD_VERSION: u16 = 2;

/// A decoded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// A committed offset of `group` for `topic`/`partition`.
    Offset {
        group: String,
        topic: String,
        partition: u32,
    },
    /// The membership of `group`.
    Group { group: String },
}

/// Encodes the key of an offset record.
pub(crate) fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(OFFSET_RECORD_VERSION);
    w.string(group);
    w.string(topic);
    w.u32(partition);
    w.into_chunks().concat()
}

/// Encodes the value of an offset record.
pub(crate) fn offset_value(c: &Committed) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(OFFSET_RECORD_VERSION);
    w.i64(c.offset);
    w.string(&c.metadata);
    w.i64(c.commit_ms);
    w.into_chunks().concat()
}

/// Encodes the key of a group record.
pub(crate) fn group_key(group: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(GROUP_RECORD_VERSION);
    w.string(group);
    w.into_chunks().concat()
}

/// Encodes the value of a group record.
pub(crate) fn group_value(g: &GroupRecord) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(GROUP_RECORD_VERSION);
    w.i32(g.generation);
    w.string(&g.protocol);
    w.string(&g.leader);
    w.count(g.members.len());
    for m in &g.members {
        w.string(&m.id);
        w.string(&m.client_id);
        w.string(&m.client_host);
        w.u32(m.session_timeout_ms);
        w.u32(m.rebalance_timeout_ms);
        for bytes in [&m.subscription, &m.assignment] {
            w.u32(u32::try_from(bytes.len()).expect("bounded by the group limits"));
            w.chunk(bytes.clone());
        }
    }
    w.into_chunks().concat()
}

/// Decodes a key; `None` for a layout this broker does not know.
pub(crate) fn decode_key(key: &[u8]) -> Option<Key> {
    let mut r = Reader::new(BytesMut::from(key));
    match r.u16("version").ok()? {
        OFFSET_RECORD_VERSION => Some(Key::Offset {
            group: r.string("group").ok()?,
            topic: r.string("topic").ok()?,
            partition: r.u32("partition").ok()?,
        }),
        GROUP_RECORD_VERSION => Some(Key::Group {
            group: r.string("group").ok()?,
        }),
        _ => None,
    }
}

/// Decodes an offset record's value.
pub(crate) fn decode_offset_value(value: &[u8]) -> Option<Committed> {
    let mut r = Reader::new(BytesMut::from(value));
    if r.u16("version").ok()? != OFFSET_RECORD_VERSION {
        return None;
    }
    Some(Committed {
        offset: r.i64("offset").ok()?,
        metadata: r.string("metadata").ok()?,
        commit_ms: r.i64("commit_ms").ok()?,
    })
}

/// Decodes a group record's value, within the coordinator's bounds (members per group,
/// subscription and assignment sizes).
pub(crate) fn decode_group_value(value: &[u8]) -> Option<GroupRecord> {
    let mut r = Reader::new(BytesMut::from(value));
    if r.u16("version").ok()? != GROUP_RECORD_VERSION {
        return None;
    }
    let generation = r.i32("generation").ok()?;
    let protocol = r.string("protocol").ok()?;
    let leader = r.string("leader").ok()?;
    // Each member takes at least its three string lengths and four u32s.
    let count = r.count("members", MEMBERS_PER_GROUP_MAX, 22).ok()?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.string("member_id").ok()?;
        let client_id = r.string("client_id").ok()?;
        let client_host = r.string("client_host").ok()?;
        let session_timeout_ms = r.u32("session_timeout_ms").ok()?;
        let rebalance_timeout_ms = r.u32("rebalance_timeout_ms").ok()?;
        let mut sized = |field, max: usize| -> Option<Bytes> {
            let len = r.u32(field).ok()? as usize;
            (len <= max).then_some(())?;
            Some(r.bytes(field, len).ok()?.freeze())
        };
        let subscription = sized("subscription", MEMBER_METADATA_BYTES_MAX)?;
        let assignment = sized("assignment", ASSIGNMENT_BYTES_MAX)?;
        members.push(PersistedMember {
            id,
            client_id,
            client_host,
            session_timeout_ms,
            rebalance_timeout_ms,
            subscription,
            assignment,
        });
    }
    r.finish().ok()?;
    Some(GroupRecord {
        generation,
        protocol,
        leader,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_records_round_trip_and_keys_tell_the_kinds_apart() {
        let record = GroupRecord {
            generation: 7,
            protocol: "range".into(),
            leader: "c-1".into(),
            members: vec![PersistedMember {
                id: "c-1".into(),
                client_id: "c".into(),
                client_host: "127.0.0.1".into(),
                session_timeout_ms: 6_000,
                rebalance_timeout_ms: 30_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from(vec![9u8; 600]),
            }],
        };
        assert_eq!(
            decode_group_value(&group_value(&record)),
            Some(record.clone())
        );
        assert_eq!(
            decode_key(&group_key("g")),
            Some(Key::Group { group: "g".into() })
        );
        assert_eq!(
            decode_key(&offset_key("g", "t", 3)),
            Some(Key::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3
            })
        );
        // Kinds do not decode as each other, and a cut value does not decode at all.
        assert_eq!(decode_offset_value(&group_value(&record)), None);
        let value = group_value(&record);
        assert_eq!(decode_group_value(&value[..value.len() - 1]), None);
        let mut unknown = group_key("g");
        unknown[1] = 9;
        assert_eq!(decode_key(&unknown), None);
    }
}
