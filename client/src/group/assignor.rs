//! Partition assignors, run by the group leader (in the client, as in Kafka): `range`,
//! `roundrobin` and `cooperative-sticky`. Pure functions of the members' subscriptions and
//! the partition counts, so every leader computes the same answer for the same input.
//!
//! - `range`: per topic, the subscribed members in id order each take a contiguous run of
//!   partitions; the first `partitions % members` take one more. Balanced within one per
//!   topic (not across topics).
//! - `roundrobin`: every subscribed partition in (topic, partition) order is dealt to the
//!   next member (in id order) subscribed to its topic.
//! - `cooperative-sticky`: members keep the partitions they own when balance allows; the
//!   rest go to the least loaded, then partitions move one at a time from the most to the
//!   least loaded member until no move can improve the balance. It is *incremental*: a
//!   partition whose target owner differs from its current owner is left out of this
//!   round's assignment entirely. Its owner sees it missing, revokes it and rejoins; the
//!   follow-up rebalance finds it unowned and assigns it. So no partition is ever owned by
//!   two members at once, and members keep consuming what does not move.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::topic_partition::TopicPartition;

/// The protocol name of [`Assignor::Range`].
pub const RANGE: &str = "range";
/// The protocol name of [`Assignor::RoundRobin`].
pub const ROUND_ROBIN: &str = "roundrobin";
/// The protocol name of [`Assignor::CooperativeSticky`].
pub const COOPERATIVE_STICKY: &str = "cooperative-sticky";

/// A partition assignment strategy. The group uses the first one in the leader's preference
/// list that every member supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Assignor {
    /// Contiguous runs of each topic's partitions (eager: revoke everything on rebalance).
    Range,
    /// Partitions dealt one by one (eager).
    RoundRobin,
    /// Sticky and incremental: only moving partitions are revoked.
    CooperativeSticky,
}

impl Assignor {
    /// The protocol name sent in JoinGroup.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => RANGE,
            Assignor::RoundRobin => ROUND_ROBIN,
            Assignor::CooperativeSticky => COOPERATIVE_STICKY,
        }
    }

    /// The assignor called `name`, if known.
    pub fn from_name(name: &str) -> Option<Assignor> {
        match name {
            RANGE => Some(Assignor::Range),
            ROUND_ROBIN => Some(Assignor::RoundRobin),
            COOPERATIVE_STICKY => Some(Assignor::CooperativeSticky),
            _ => None,
        }
    }

    /// Whether members keep their partitions through a rebalance and revoke only the ones
    /// that move (`true`), or revoke everything before rejoining (`false`, "eager").
    pub fn is_cooperative(self) -> bool {
        matches!(self, Assignor::CooperativeSticky)
    }

    /// Assigns the partitions of the subscribed topics (`partitions` gives each topic's
    /// count; a subscribed topic missing from it is ignored) to `members`.
    /// Every member appears in the result, possibly with nothing.
    pub fn assign(
        self,
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, u32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut out: BTreeMap<String, Vec<TopicPartition>> = members
            .iter()
            .map(|m| (m.member_id.clone(), Vec::new()))
            .collect();
        match self {
            Assignor::Range => range(members, partitions, &mut out),
            Assignor::RoundRobin => round_robin(members, partitions, &mut out),
            Assignor::CooperativeSticky => cooperative_sticky(members, partitions, &mut out),
        }
        for list in out.values_mut() {
            list.sort();
        }
        out
    }
}

impl fmt::Display for Assignor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one member told the leader: its topics and the partitions it owns now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSubscription {
    /// The member id.
    pub member_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Partitions it owns (empty for eager assignors, which revoke before rejoining).
    pub owned: Vec<TopicPartition>,
}

/// Members subscribed to `topic`, in id order.
fn subscribers<'a>(members: &'a [MemberSubscription], topic: &str) -> Vec<&'a str> {
    let mut ids: Vec<&str> = members
        .iter()
        .filter(|m| m.topics.iter().any(|t| t == topic))
        .map(|m| m.member_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Every topic some member subscribes to and whose partition count is known.
fn subscribed_topics<'a>(
    members: &'a [MemberSubscription],
    partitions: &BTreeMap<String, u32>,
) -> BTreeSet<&'a str> {
    members
        .iter()
        .flat_map(|m| m.topics.iter())
        .filter(|t| partitions.contains_key(t.as_str()))
        .map(String::as_str)
        .collect()
}

fn range(
    members: &[MemberSubscription],
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    for topic in subscribed_topics(members, partitions) {
        let count = partitions[topic];
        let ids = subscribers(members, topic);
        let n = ids.len() as u32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0u32;
        for (i, id) in ids.iter().enumerate() {
            let take = per + u32::from((i as u32) < extra);
            let list = out.get_mut(*id).expect("every member has an entry");
            list.extend((next..next + take).map(|p| TopicPartition::new(topic, p)));
            next += take;
        }
    }
}

fn round_robin(
    members: &[MemberSubscription],
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let mut ids: Vec<&MemberSubscription> = members.iter().collect();
    ids.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    ids.dedup_by(|a, b| a.member_id == b.member_id);
    let mut cursor = 0usize;
    for topic in subscribed_topics(members, partitions) {
        for p in 0..partitions[topic] {
            // The next member in the ring subscribed to this topic (one exists: the topic
            // came from someone's subscription).
            for step in 0..ids.len() {
                let m = ids[(cursor + step) % ids.len()];
                if m.topics.iter().any(|t| t == topic) {
                    out.get_mut(&m.member_id)
                        .expect("every member has an entry")
                        .push(TopicPartition::new(topic, p));
                    cursor = (cursor + step + 1) % ids.len();
                    break;
                }
            }
        }
    }
}

fn cooperative_sticky(
    members: &[MemberSubscription],
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let subscribed = |id: &str, topic: &str| {
        members
            .iter()
            .any(|m| m.member_id == id && m.topics.iter().any(|t| t == topic))
    };
    let exists = |tp: &TopicPartition| partitions.get(&tp.topic).is_some_and(|n| tp.partition < *n);
    // Current owners. A partition claimed by two members (a stale member's report) has no
    // safe owner: it is given to nobody this round, so both revoke it.
    let mut claims: BTreeMap<&TopicPartition, Vec<&str>> = BTreeMap::new();
    for m in members {
        for tp in BTreeSet::<&TopicPartition>::from_iter(&m.owned) {
            claims.entry(tp).or_default().push(&m.member_id);
        }
    }
    let owner: BTreeMap<&TopicPartition, &str> = claims
        .iter()
        .filter(|(_, ids)| ids.len() == 1)
        .map(|(tp, ids)| (*tp, ids[0]))
        .collect();
    let contested: BTreeSet<&TopicPartition> = claims
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(tp, _)| *tp)
        .collect();

    // Target: keep valid owned partitions, hand out the rest to the least loaded.
    let mut target: BTreeMap<&str, BTreeSet<TopicPartition>> = members
        .iter()
        .map(|m| (m.member_id.as_str(), BTreeSet::new()))
        .collect();
    for (tp, id) in &owner {
        if exists(tp) && subscribed(id, &tp.topic) {
            target
                .get_mut(id)
                .expect("owners are members")
                .insert((*tp).clone());
        }
    }
    let taken: BTreeSet<TopicPartition> = target.values().flatten().cloned().collect();
    for topic in subscribed_topics(members, partitions) {
        let ids = subscribers(members, topic);
        for p in 0..partitions[topic] {
            let tp = TopicPartition::new(topic, p);
            if taken.contains(&tp) {
                continue;
            }
            let least = ids
                .iter()
                .min_by_key(|id| (target[**id].len(), **id))
                .expect("a subscribed topic has a subscriber");
            target.get_mut(*least).expect("member").insert(tp);
        }
    }

    // Balance: move one partition at a time from a most loaded member to a member at least
    // two below it that subscribes to its topic. Each move lowers the sum of squared loads,
    // so this ends; it is bounded by that sum.
    let owned_by = |id: &str, tp: &TopicPartition| owner.get(tp).is_some_and(|o| *o == id);
    loop {
        let mut by_load: Vec<(&str, usize)> = target.iter().map(|(id, s)| (*id, s.len())).collect();
        by_load.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut moved = None;
        'find: for &(from, from_load) in &by_load {
            for &(to, to_load) in by_load.iter().rev() {
                if to_load + 2 > from_load {
                    continue;
                }
                // Prefer moving a partition the giver does not own yet (no revocation).
                let candidates = target[from].iter().filter(|tp| subscribed(to, &tp.topic));
                let pick = candidates
                    .clone()
                    .rfind(|tp| !owned_by(from, tp))
                    .or_else(|| candidates.clone().next_back());
                if let Some(tp) = pick {
                    moved = Some((from, to, tp.clone()));
                    break 'find;
                }
            }
        }
        let Some((from, to, tp)) = moved else { break };
        target.get_mut(from).expect("member").remove(&tp);
        target.get_mut(to).expect("member").insert(tp);
    }

    // Incremental step: a partition owned by someone else (or contested) waits for the next
    // round, after its owner has revoked it.
    for (id, set) in target {
        let list = out.get_mut(id).expect("member");
        for tp in set {
            if contested.contains(&tp) {
                continue;
            }
            match owner.get(&tp) {
                Some(o) if *o != id => continue,
                _ => list.push(tp),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn member(id: &str, topics: &[&str], owned: &[(&str, u32)]) -> MemberSubscription {
        MemberSubscription {
            member_id: id.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            owned: owned
                .iter()
                .map(|(t, p)| TopicPartition::new(*t, *p))
                .collect(),
        }
    }

    fn tps(list: &[(&str, u32)]) -> Vec<TopicPartition> {
        list.iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect()
    }

    fn counts(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    #[test]
    fn range_gives_contiguous_runs_per_topic() {
        let members = [member("b", &["t", "u"], &[]), member("a", &["t", "u"], &[])];
        let out = Assignor::Range.assign(&members, &counts(&[("t", 3), ("u", 3)]));
        assert_eq!(out["a"], tps(&[("t", 0), ("t", 1), ("u", 0), ("u", 1)]));
        assert_eq!(out["b"], tps(&[("t", 2), ("u", 2)]));
    }

    #[test]
    fn round_robin_deals_across_topics() {
        let members = [member("b", &["t", "u"], &[]), member("a", &["t", "u"], &[])];
        let out = Assignor::RoundRobin.assign(&members, &counts(&[("t", 3), ("u", 3)]));
        assert_eq!(out["a"], tps(&[("t", 0), ("t", 2), ("u", 1)]));
        assert_eq!(out["b"], tps(&[("t", 1), ("u", 0), ("u", 2)]));
    }

    #[test]
    fn cooperative_sticky_revokes_first_then_assigns() {
        // a owns all six; b joins. Round 1: a keeps three and loses three, b gets nothing
        // yet (a still owns them). Round 2: b gets the three a revoked.
        let all: Vec<(&str, u32)> = (0..6).map(|p| ("t", p)).collect();
        let n = counts(&[("t", 6)]);
        let round1 = Assignor::CooperativeSticky
            .assign(&[member("a", &["t"], &all), member("b", &["t"], &[])], &n);
        assert_eq!(round1["a"].len(), 3);
        assert!(round1["b"].is_empty());
        let kept: Vec<(&str, u32)> = round1["a"].iter().map(|tp| ("t", tp.partition)).collect();
        let round2 = Assignor::CooperativeSticky
            .assign(&[member("a", &["t"], &kept), member("b", &["t"], &[])], &n);
        assert_eq!(round2["a"], round1["a"]);
        assert_eq!(round2["b"].len(), 3);
    }

    #[test]
    fn names_round_trip() {
        for a in [
            Assignor::Range,
            Assignor::RoundRobin,
            Assignor::CooperativeSticky,
        ] {
            assert_eq!(Assignor::from_name(a.name()), Some(a));
        }
        assert_eq!(Assignor::from_name("sticky"), None);
    }

    const TOPICS: [&str; 3] = ["t0", "t1", "t2"];

    /// Members `m0..`, each with a non-empty subset of up to three topics (bit mask), and
    /// partition counts per topic.
    fn group() -> impl Strategy<Value = (Vec<MemberSubscription>, BTreeMap<String, u32>)> {
        (
            prop::collection::vec(1u8..8, 1..7),
            prop::collection::vec(0u32..10, 3),
        )
            .prop_map(|(masks, sizes)| {
                let members = masks
                    .iter()
                    .enumerate()
                    .map(|(i, mask)| MemberSubscription {
                        member_id: format!("m{i}"),
                        topics: TOPICS
                            .iter()
                            .enumerate()
                            .filter(|(b, _)| mask & (1 << b) != 0)
                            .map(|(_, t)| (*t).to_owned())
                            .collect(),
                        owned: Vec::new(),
                    })
                    .collect();
                let counts = TOPICS
                    .iter()
                    .zip(sizes)
                    .map(|(t, n)| ((*t).to_owned(), n))
                    .collect();
                (members, counts)
            })
    }

    /// Every partition of a subscribed topic is assigned exactly once, to a subscriber.
    fn check_complete(
        members: &[MemberSubscription],
        counts: &BTreeMap<String, u32>,
        out: &BTreeMap<String, Vec<TopicPartition>>,
    ) -> Result<(), TestCaseError> {
        let mut seen: BTreeMap<TopicPartition, &str> = BTreeMap::new();
        for (id, list) in out {
            let m = members
                .iter()
                .find(|m| &m.member_id == id)
                .expect("known member");
            for tp in list {
                prop_assert!(m.topics.contains(&tp.topic), "{tp} to non-subscriber {id}");
                prop_assert!(seen.insert(tp.clone(), id).is_none(), "{tp} twice");
            }
        }
        for (topic, n) in counts {
            if members.iter().any(|m| m.topics.contains(topic)) {
                for p in 0..*n {
                    prop_assert!(seen.contains_key(&TopicPartition::new(topic, p)));
                }
            }
        }
        prop_assert_eq!(
            seen.len(),
            counts
                .iter()
                .filter(|(t, _)| members.iter().any(|m| m.topics.contains(t)))
                .map(|(_, n)| *n as usize)
                .sum::<usize>()
        );
        Ok(())
    }

    fn spread(out: &BTreeMap<String, Vec<TopicPartition>>, topic: Option<&str>) -> usize {
        let loads: Vec<usize> = out
            .values()
            .map(|l| {
                l.iter()
                    .filter(|tp| topic.is_none_or(|t| tp.topic == t))
                    .count()
            })
            .collect();
        loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0)
    }

    proptest! {
        #[test]
        fn every_assignor_is_complete_and_deterministic((members, counts) in group()) {
            for a in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
                let out = a.assign(&members, &counts);
                check_complete(&members, &counts, &out)?;
                let mut reversed = members.clone();
                reversed.reverse();
                prop_assert_eq!(&a.assign(&reversed, &counts), &out, "{} depends on order", a);
            }
        }

        #[test]
        fn equal_subscriptions_are_balanced_within_one(
            (members, counts) in group(),
        ) {
            let topics = members[0].topics.clone();
            let members: Vec<MemberSubscription> = members
                .into_iter()
                .map(|m| MemberSubscription { topics: topics.clone(), ..m })
                .collect();
            for a in [Assignor::RoundRobin, Assignor::CooperativeSticky] {
                let out = a.assign(&members, &counts);
                prop_assert!(spread(&out, None) <= 1, "{} unbalanced: {:?}", a, out);
            }
            let out = Assignor::Range.assign(&members, &counts);
            for t in &topics {
                prop_assert!(spread(&out, Some(t)) <= 1, "range unbalanced on {}", t);
            }
        }

        /// Members join and leave one at a time (all on the same topics); after each change
        /// the cooperative protocol runs rounds, each member giving up what its assignment
        /// lacks, until nothing changes. In every round no partition is handed to one member
        /// while another owns it; at most two rounds are needed; the result is complete
        /// and balanced; and a member present throughout keeps at least
        /// `min(before, floor(partitions / members))` of its partitions.
        #[test]
        fn cooperative_rebalances_never_double_own(
            sizes in prop::collection::vec(0u32..9, 2),
            events in prop::collection::vec(any::<(bool, u8)>(), 1..12),
        ) {
            let counts: BTreeMap<String, u32> =
                ["t0", "t1"].iter().zip(sizes).map(|(t, n)| ((*t).to_owned(), n)).collect();
            let total: usize = counts.values().map(|n| *n as usize).sum();
            let topics = vec!["t0".to_owned(), "t1".to_owned()];
            let mut owned: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
            let mut next_id = 0;
            for (join, pick) in events {
                if join || owned.len() <= 1 {
                    owned.insert(format!("m{next_id:02}"), Vec::new());
                    next_id += 1;
                } else {
                    let victim = owned.keys().nth(pick as usize % owned.len()).cloned();
                    owned.remove(&victim.expect("a member"));
                }
                let before = owned.clone();
                let mut rounds = 0;
                loop {
                    let members: Vec<MemberSubscription> = owned
                        .iter()
                        .map(|(id, o)| MemberSubscription {
                            member_id: id.clone(),
                            topics: topics.clone(),
                            owned: o.clone(),
                        })
                        .collect();
                    let out = Assignor::CooperativeSticky.assign(&members, &counts);
                    for (id, list) in &out {
                        for tp in list {
                            for (other, theirs) in &owned {
                                prop_assert!(
                                    other == id || !theirs.contains(tp),
                                    "{} given to {} while {} owns it", tp, id, other
                                );
                            }
                        }
                    }
                    if out == owned {
                        break;
                    }
                    rounds += 1;
                    prop_assert!(rounds <= 2, "not stable after two rounds");
                    owned = out;
                }
                let members: Vec<MemberSubscription> = owned
                    .keys()
                    .map(|id| MemberSubscription {
                        member_id: id.clone(),
                        topics: topics.clone(),
                        owned: Vec::new(),
                    })
                    .collect();
                check_complete(&members, &counts, &owned)?;
                prop_assert!(spread(&owned, None) <= 1, "unbalanced: {:?}", owned);
                let floor = total / owned.len();
                for (id, prev) in &before {
                    if let Some(now) = owned.get(id) {
                        let kept = prev.iter().filter(|tp| now.contains(tp)).count();
                        prop_assert!(
                            kept >= prev.len().min(floor),
                            "{} kept {} of {} (floor {})", id, kept, prev.len(), floor
                        );
                    }
                }
            }
        }
    }
}
