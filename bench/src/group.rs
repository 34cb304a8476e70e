//! `consume | e2e --group G`: the consumers are the members of one consumer group (each its
//! own `Consumer` subscribed to the topics, on its own thread), and the run accounts for
//! what the group as a whole was delivered.
//!
//! - **Start.** Before any member runs, the bench sets the group's committed offsets to the
//!   partitions' ends (the group must have no members, else the broker refuses and the bench
//!   says so), starts the members and waits until the group is **formed**: stable, with
//!   every member and every partition assigned. The coordinator has no initial-rebalance
//!   delay, so members join one round at a time; without this wait the first member would
//!   read a backlog alone before the others are given partitions. Then the clock starts.
//!   `e2e`: the producers start, and the group reads from the ends it was given. `consume`:
//!   each partition's first owner moves it back to the partition's first offset; later
//!   owners start at the group's committed offsets, as usual.
//! - **Accounting** ([`Ledger`], bounded: one entry per partition). Per partition it keeps
//!   the next offset expected (one past the highest delivered). A delivery below it is a
//!   **duplicate** (delivered at or below the highest offset already seen, by any member);
//!   a delivery above it skips offsets, counted as **gaps**. When the run ends, offsets between
//!   the highest delivered and the partition's end (`consume`: the end at start; `e2e`: the
//!   end once every producer finished) are **missing**. A record's first delivery is what
//!   the throughput and the end-to-end latency count.
//! - **Rebalances** ([`Rebalances`]). Each member notes the polls in which its generation
//!   changed (the poll that rejoined). A rebalance is one new generation after the group
//!   formed; it took from the earliest start of such a poll (or the churned member's leave,
//!   if earlier) to the latest return of one, so it includes the members noticing it
//!   through their heartbeats (every 3 s by default) and the wait for each other. The
//!   cooperative assignor's second round is a generation of its own.
//! - **Assignor** (`--assignor NAME`): the members offer only that one; by default the
//!   client's list (`cooperative-sticky`, then `range`).
//! - **Churn** (`--churn-every S`): every S seconds the longest-running member leaves
//!   (`close`: commit, LeaveGroup), then a new member joins.
//! - **End.** The members stop when every partition reached its end, or when the group
//!   received nothing new for [`GROUP_IDLE_TIMEOUT`] (then `missing` says what never came).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use sluice_client::{
    Assignor, Client, Consumer, ConsumerConfig, ConsumerRecord, SeekTo, TopicPartition,
    decode_assignment,
};
use sluice_proto::protocol::group_state;
use tokio::sync::oneshot;

use crate::load::{ConsumerResult, Counters, Mode, Plan, unix_nanos};

/// With `--group`: the members stop when the group as a whole received nothing new for this
/// long (after the producers finished, in `e2e`). Longer than the plain consumers' timeout:
/// a rebalance may legitimately wait for a member's session timeout (10 s by default).
pub(crate) const GROUP_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Generations whose timing is kept; further rebalances are counted but not timed.
pub(crate) const REBALANCES_TRACKED_MAX: usize = 10_000;
/// Churned members' leave times waiting to be matched with the rebalance they cause.
const PENDING_LEAVES_MAX: usize = 1024;
/// How long a member waits for records in one poll.
const MEMBER_POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// The shortest `--churn-every`: below it the group would never be stable.
pub(crate) const CHURN_EVERY_MIN_S: f64 = 0.1;
/// How long the initial members may take to form the group.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the bench asks the coordinator whether the group has formed.
const FORMATION_POLL: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Delivery accounting of one partition.
#[derive(Debug, Clone, Copy)]
struct PartitionLedger {
    /// The first offset of the run.
    start: u64,
    /// One past the highest offset delivered (starts at `start`).
    next: u64,
    /// Where the run ends (set at start in `consume`, after the producers in `e2e`).
    end: Option<u64>,
}

/// What the group was delivered, per partition; bounded by the number of partitions.
pub(crate) struct Ledger {
    /// Topic → partition → entry (no allocation per record looked up).
    index: HashMap<String, Vec<Option<usize>>>,
    /// Partitions a member has moved to their start (only the first owner does).
    positioned: Mutex<Vec<bool>>,
    inner: Mutex<LedgerInner>,
}

struct LedgerInner {
    parts: Vec<PartitionLedger>,
    /// Every delivery, duplicates included.
    received: u64,
    duplicates: u64,
    gaps: u64,
    /// Deliveries of partitions the run does not read (none expected).
    unexpected: u64,
    /// When the last first delivery came (or the run started).
    last_progress: Instant,
}

/// The accounting's totals.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LedgerTotals {
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    pub(crate) gaps: u64,
    /// Offsets between the highest delivered and the partition's end.
    pub(crate) missing: u64,
    pub(crate) unexpected: u64,
}

impl Ledger {
    /// A ledger over `partitions`, each starting at its offset in `starts`.
    pub(crate) fn new(partitions: Vec<TopicPartition>, starts: &[u64]) -> Ledger {
        let mut index: HashMap<String, Vec<Option<usize>>> = HashMap::new();
        let mut parts = Vec::with_capacity(partitions.len());
        for (i, (tp, &start)) in partitions.into_iter().zip(starts).enumerate() {
            let slots = index.entry(tp.topic).or_default();
            let p = tp.partition as usize;
            if slots.len() <= p {
                slots.resize(p + 1, None);
            }
            slots[p] = Some(i);
            parts.push(PartitionLedger {
                start,
                next: start,
                end: None,
            });
        }
        Ledger {
            positioned: Mutex::new(vec![false; parts.len()]),
            index,
            inner: Mutex::new(LedgerInner {
                parts,
                received: 0,
                duplicates: 0,
                gaps: 0,
                unexpected: 0,
                last_progress: Instant::now(),
            }),
        }
    }

    fn entry(&self, topic: &str, partition: u32) -> Option<usize> {
        self.index
            .get(topic)
            .and_then(|slots| slots.get(partition as usize).copied().flatten())
    }

    /// Of `assigned`, the partitions no member has moved to their start yet, with that start;
    /// they count as moved from now on.
    fn to_position(&self, assigned: &[TopicPartition]) -> Vec<(TopicPartition, u64)> {
        let mut positioned = lock(&self.positioned);
        let inner = lock(&self.inner);
        let mut out = Vec::new();
        for tp in assigned {
            let Some(i) = self.entry(&tp.topic, tp.partition) else {
                continue;
            };
            if !positioned[i] {
                positioned[i] = true;
                out.push((tp.clone(), inner.parts[i].start));
            }
        }
        out
    }

    /// Sets where each partition's run ends (same order as at construction).
    pub(crate) fn set_ends(&self, ends: &[u64]) {
        let mut inner = lock(&self.inner);
        for (p, &end) in inner.parts.iter_mut().zip(ends) {
            p.end = Some(end);
        }
    }

    /// Accounts one poll's records; `first[i]` says whether record `i` was its first delivery.
    pub(crate) fn account(&self, records: &[ConsumerRecord], first: &mut Vec<bool>) {
        first.clear();
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        for r in records {
            inner.received += 1;
            let Some(i) = self.entry(&r.topic, r.partition) else {
                inner.unexpected += 1;
                first.push(false);
                continue;
            };
            let next = inner.parts[i].next;
            if r.offset < next {
                inner.duplicates += 1;
                first.push(false);
                continue;
            }
            inner.gaps += r.offset - next;
            inner.parts[i].next = r.offset + 1;
            inner.last_progress = now;
            first.push(true);
        }
    }

    /// Whether every partition has an end and was delivered up to it.
    pub(crate) fn done(&self) -> bool {
        let inner = lock(&self.inner);
        inner
            .parts
            .iter()
            .all(|p| p.end.is_some_and(|end| p.next >= end))
    }

    /// When the group last received a record for the first time.
    pub(crate) fn last_progress(&self) -> Instant {
        lock(&self.inner).last_progress
    }

    /// Restarts the idle clock (when the producers finish).
    pub(crate) fn touch(&self) {
        lock(&self.inner).last_progress = Instant::now();
    }

    /// The totals so far.
    pub(crate) fn totals(&self) -> LedgerTotals {
        let inner = lock(&self.inner);
        LedgerTotals {
            received: inner.received,
            duplicates: inner.duplicates,
            gaps: inner.gaps,
            missing: inner
                .parts
                .iter()
                .map(|p| {
                    p.end
                        .map_or(0, |end| end.saturating_sub(p.next.max(p.start)))
                })
                .sum(),
            unexpected: inner.unexpected,
        }
    }
}

/// The timing of each generation the members went through.
#[derive(Default)]
pub(crate) struct Rebalances {
    /// Generation → (earliest start, latest end) of the polls that moved a member into it.
    spans: BTreeMap<i32, (Instant, Instant)>,
    /// Generations seen beyond [`REBALANCES_TRACKED_MAX`].
    untracked: u64,
    /// Leave times of churned members, not yet matched with a generation.
    leaves: VecDeque<Instant>,
}

/// One timed rebalance in the JSON.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct RebalanceTime {
    /// The generation it produced.
    pub generation: i32,
    /// Milliseconds from its start to the last member's return.
    pub ms: f64,
}

impl Rebalances {
    /// A member's poll from `start` to `end` moved it into `generation`.
    fn transition(&mut self, generation: i32, start: Instant, end: Instant) {
        if let Some(span) = self.spans.get_mut(&generation) {
            span.0 = span.0.min(start);
            span.1 = span.1.max(end);
        } else if self.spans.len() < REBALANCES_TRACKED_MAX {
            self.spans.insert(generation, (start, end));
        } else {
            self.untracked += 1;
        }
    }

    /// A churned member starts leaving.
    fn leave(&mut self, at: Instant) {
        if self.leaves.len() == PENDING_LEAVES_MAX {
            self.leaves.pop_front();
        }
        self.leaves.push_back(at);
    }

    /// The rebalances, with their durations, and how many more were seen but not timed.
    pub(crate) fn summary(&self) -> (Vec<RebalanceTime>, u64) {
        let mut leaves: Vec<Instant> = self.leaves.iter().copied().collect();
        leaves.sort();
        let mut out = Vec::new();
        let mut leaves = leaves.into_iter().peekable();
        for (&generation, &(start, end)) in &self.spans {
            let mut start = start;
            // A leave belongs to the first generation completed after it.
            while let Some(&t) = leaves.peek() {
                if t > end {
                    break;
                }
                start = start.min(t);
                leaves.next();
            }
            out.push(RebalanceTime {
                generation,
                ms: end.saturating_duration_since(start).as_secs_f64() * 1e3,
            });
        }
        (out, self.untracked)
    }
}

/// What the members share.
pub(crate) struct GroupCtx {
    pub(crate) group: String,
    /// `--assignor`, else the client's default list.
    pub(crate) assignor: Option<Assignor>,
    pub(crate) topics: Vec<String>,
    pub(crate) ledger: Ledger,
    pub(crate) rebalances: Mutex<Rebalances>,
    /// Set when the run is over: transitions after it are the members leaving at the end.
    finished: AtomicBool,
    /// The generation the group formed with, once it has (set before `go`).
    formed_generation: Mutex<Option<i32>>,
    /// Set once the group formed: members move their partitions to the start, the clock runs.
    go: AtomicBool,
    /// Members started (initial ones and churn).
    members_started: Mutex<u64>,
}

impl GroupCtx {
    /// The shared state of a group run.
    pub(crate) fn new(
        group: String,
        assignor: Option<Assignor>,
        topics: Vec<String>,
        ledger: Ledger,
    ) -> GroupCtx {
        GroupCtx {
            group,
            assignor,
            topics,
            ledger,
            rebalances: Mutex::new(Rebalances::default()),
            finished: AtomicBool::new(false),
            formed_generation: Mutex::new(None),
            go: AtomicBool::new(false),
            members_started: Mutex::new(0),
        }
    }

    /// Members started in all.
    pub(crate) fn members_started(&self) -> u64 {
        *lock(&self.members_started)
    }

    /// Whether the members should stop: every partition read to its end, or nothing new for
    /// [`GROUP_IDLE_TIMEOUT`] once nothing more is coming.
    fn over(&self, mode: Mode, counters: &Counters) -> bool {
        if self.finished.load(Ordering::SeqCst) {
            return true;
        }
        let waiting = mode == Mode::Consume || counters.producers_done.load(Ordering::SeqCst);
        let over = self.ledger.done()
            || (waiting && self.ledger.last_progress().elapsed() > GROUP_IDLE_TIMEOUT);
        if over && !self.finished.swap(true, Ordering::SeqCst) && !self.ledger.done() {
            eprintln!(
                "sluice-bench: group {} received nothing new for {} s; stopping its members",
                self.group,
                GROUP_IDLE_TIMEOUT.as_secs()
            );
        }
        over
    }
}

/// A running member: its stop flag and its result.
struct Member {
    stop: Arc<AtomicBool>,
    result: oneshot::Receiver<Result<ConsumerResult, String>>,
}

/// The consumer config of a member.
fn member_config(ctx: &GroupCtx) -> ConsumerConfig {
    let default = ConsumerConfig::default();
    ConsumerConfig {
        fetch_max_wait: Duration::from_millis(100),
        fetch_min_bytes: 1,
        fetch_max_bytes: 16 << 20,
        partition_max_bytes: 4 << 20,
        group_id: Some(ctx.group.clone()),
        assignors: ctx.assignor.map_or(default.assignors.clone(), |a| vec![a]),
        ..default
    }
}

/// Starts member number `n` on its own thread (its futures run on this runtime's handle).
fn spawn_member(
    client: &Client,
    n: u64,
    mode: Mode,
    ctx: &Arc<GroupCtx>,
    plan: &Arc<Plan>,
    counters: &Arc<Counters>,
) -> Result<Member, String> {
    let mut consumer = Consumer::new(client.clone(), member_config(ctx));
    consumer
        .subscribe(ctx.topics.clone(), ())
        .map_err(|e| format!("subscribe: {e}"))?;
    *lock(&ctx.members_started) += 1;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    let (ctx, plan, counters, flag) = (
        Arc::clone(ctx),
        Arc::clone(plan),
        Arc::clone(counters),
        Arc::clone(&stop),
    );
    std::thread::Builder::new()
        .name(format!("member-{n}"))
        .spawn(move || {
            let result = handle.block_on(member_loop(consumer, mode, ctx, flag, plan, counters));
            let _ = tx.send(result);
        })
        .map_err(|e| format!("cannot start a member thread: {e}"))?;
    Ok(Member { stop, result: rx })
}

/// One member: polls until the run is over (or it is churned out), accounts what it got,
/// then leaves the group.
async fn member_loop(
    mut consumer: Consumer,
    mode: Mode,
    ctx: Arc<GroupCtx>,
    stop: Arc<AtomicBool>,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
) -> Result<ConsumerResult, String> {
    let mut result = ConsumerResult::new();
    let measure_from_ns = plan.clock.unix_ns(plan.measure_from);
    let mut first = Vec::new();
    let outcome = loop {
        if stop.load(Ordering::SeqCst) || ctx.over(mode, &counters) {
            break Ok(());
        }
        let generation = consumer.group_identity().map(|(_, g)| g);
        let started = Instant::now();
        let batch = match consumer.poll(MEMBER_POLL_TIMEOUT).await {
            Ok(batch) => batch,
            Err(e) => break Err(format!("group member: {e}")),
        };
        let now = Instant::now();
        let after = consumer.group_identity().map(|(_, g)| g);
        if let Some(g) = after
            && after != generation
            && lock(&ctx.formed_generation).is_some_and(|formed| g > formed)
            && !ctx.finished.load(Ordering::SeqCst)
        {
            lock(&ctx.rebalances).transition(g, started, now);
        }
        // consume: the group formed at the ends (nothing to read, nobody produces), so a
        // partition's first owner has read nothing when it moves it back to the start.
        // (e2e starts at the ends: nothing to move; and a move after the producers started
        // would re-read.)
        if mode == Mode::Consume && ctx.go.load(Ordering::SeqCst) {
            for (tp, start) in ctx.ledger.to_position(&consumer.assignment()) {
                consumer
                    .seek(&tp, SeekTo::Offset(start))
                    .await
                    .map_err(|e| format!("group member: seek {tp} to {start}: {e}"))?;
            }
        }
        if batch.is_empty() {
            continue;
        }
        ctx.ledger.account(&batch, &mut first);
        let now_ns = unix_nanos(SystemTime::now());
        let mut fresh = 0u64;
        for (record, &is_first) in batch.iter().zip(&first) {
            if !is_first {
                continue;
            }
            fresh += 1;
            if let Some(value) = &record.value {
                result.measure(mode, value, measure_from_ns, now_ns)?;
            }
        }
        if fresh > 0 {
            counters.consumed.fetch_add(fresh, Ordering::SeqCst);
            result.first.get_or_insert(now);
            result.last = Some(now);
        }
    };
    if stop.load(Ordering::SeqCst) {
        lock(&ctx.rebalances).leave(Instant::now());
    }
    // Commits what it was given and leaves, so the others take over at once.
    let closed = consumer
        .close()
        .await
        .map_err(|e| format!("group member close: {e}"));
    outcome.and(closed).map(|()| result)
}

/// The group's members while the run goes on.
pub(crate) struct GroupRun {
    client: Client,
    mode: Mode,
    ctx: Arc<GroupCtx>,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    running: VecDeque<Member>,
    /// Members started so far (their thread names).
    n: u64,
}

/// Starts `members` members and waits until the group is formed: stable, every member
/// in it and every partition assigned. Returns the running group and how long forming took.
pub(crate) async fn start_group(
    client: Client,
    mode: Mode,
    members: usize,
    ctx: Arc<GroupCtx>,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
) -> Result<(GroupRun, Duration), String> {
    let began = Instant::now();
    let mut run = GroupRun {
        client,
        mode,
        ctx,
        plan,
        counters,
        running: VecDeque::new(),
        n: 0,
    };
    for _ in 0..members {
        run.spawn()?;
    }
    let partitions = run.plan_partitions();
    loop {
        if began.elapsed() > FORMATION_TIMEOUT {
            return Err(format!(
                "group {} did not form within {} s",
                run.ctx.group,
                FORMATION_TIMEOUT.as_secs()
            ));
        }
        if run.running.iter_mut().any(|m| !m.result.is_empty()) {
            return Err(format!(
                "a member of group {} stopped while the group formed",
                run.ctx.group
            ));
        }
        if let Ok(g) = run.client.describe_group(&run.ctx.group).await
            && g.state == group_state::STABLE
            && g.members.len() == members
        {
            let mut assigned = 0;
            for m in &g.members {
                assigned += decode_assignment(&m.assignment)
                    .map_err(|e| e.to_string())?
                    .len();
            }
            if assigned == partitions {
                *lock(&run.ctx.formed_generation) = Some(g.generation_id);
                run.ctx.go.store(true, Ordering::SeqCst);
                return Ok((run, began.elapsed()));
            }
        }
        tokio::time::sleep(FORMATION_POLL).await;
    }
}

impl GroupRun {
    fn plan_partitions(&self) -> usize {
        lock(&self.ctx.ledger.inner).parts.len()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let member = spawn_member(
            &self.client,
            self.n,
            self.mode,
            &self.ctx,
            &self.plan,
            &self.counters,
        )?;
        self.running.push_back(member);
        self.n += 1;
        Ok(())
    }

    /// Runs until the run is over, one member replaced every `churn_every` seconds; returns
    /// the members' results merged.
    pub(crate) async fn run(self, churn_every: Option<f64>) -> Result<ConsumerResult, String> {
        let GroupRun {
            client,
            mode,
            ctx,
            plan,
            counters,
            mut running,
            mut n,
        } = self;
        let mut done = Vec::new();
        if let Some(every) = churn_every {
            let period = Duration::from_secs_f64(every);
            let mut next = Instant::now() + period;
            loop {
                while Instant::now() < next {
                    if ctx.over(mode, &counters) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if ctx.over(mode, &counters) {
                    break;
                }
                next += period;
                let Some(old) = running.pop_front() else {
                    break;
                };
                old.stop.store(true, Ordering::SeqCst);
                let result = old
                    .result
                    .await
                    .map_err(|_| "a group member thread died".to_string())?;
                let failed = result.is_err();
                done.push(result);
                if failed {
                    break;
                }
                running.push_back(spawn_member(&client, n, mode, &ctx, &plan, &counters)?);
                n += 1;
            }
        }
        for member in running {
            done.push(
                member
                    .result
                    .await
                    .map_err(|_| "a group member thread died".to_string())?,
            );
        }
        let mut merged = ConsumerResult::new();
        for r in done {
            merged.merge(r?)?;
        }
        Ok(merged)
    }
}

/// Per-partition offsets (`timestamp`: earliest or latest) of `partitions`.
pub(crate) async fn partition_offsets(
    client: &Client,
    partitions: &[TopicPartition],
    timestamp: i64,
) -> Result<Vec<u64>, String> {
    let mut out = Vec::with_capacity(partitions.len());
    for tp in partitions {
        out.push(
            client
                .list_offset(&tp.topic, tp.partition, timestamp)
                .await
                .map_err(|e| format!("list offsets of {tp}: {e}"))?,
        );
    }
    Ok(out)
}

/// Sets the group's committed offsets to where the run starts.
pub(crate) async fn position_group(
    client: &Client,
    group: &str,
    partitions: &[TopicPartition],
    starts: &[u64],
) -> Result<(), String> {
    let offsets: BTreeMap<TopicPartition, u64> = partitions
        .iter()
        .cloned()
        .zip(starts.iter().copied())
        .collect();
    client
        .reset_offsets(group, &offsets)
        .await
        .map_err(|e| match e {
            sluice_client::ClientError::NonEmptyGroup { .. } => format!(
                "group {group} has members: the bench needs a group of its own (another --group)"
            ),
            e => format!("cannot set group {group}'s starting offsets: {e}"),
        })
}

/// The group figures of a run, for the JSON.
#[derive(Debug, Default)]
pub(crate) struct GroupFigures {
    pub(crate) totals: LedgerTotals,
    pub(crate) rebalances: Vec<RebalanceTime>,
    pub(crate) untimed: u64,
    pub(crate) members_started: u64,
}

/// Collects the figures once the members are done.
pub(crate) fn figures(ctx: &GroupCtx) -> GroupFigures {
    let (rebalances, untimed) = lock(&ctx.rebalances).summary();
    GroupFigures {
        totals: ctx.ledger.totals(),
        rebalances,
        untimed,
        members_started: ctx.members_started(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(partition: u32, offset: u64) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition,
            offset,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from_static(b"12345678")),
            headers: Vec::new(),
        }
    }

    #[test]
    fn ledger_counts_duplicates_gaps_and_missing() {
        let parts = vec![TopicPartition::new("t", 0), TopicPartition::new("t", 1)];
        let ledger = Ledger::new(parts, &[10, 0]);
        let mut first = Vec::new();
        ledger.account(&[rec(0, 10), rec(0, 11), rec(1, 0)], &mut first);
        assert_eq!(first, [true, true, true]);
        // Re-delivered after a rebalance: 10 and 11 again, then new ones.
        ledger.account(&[rec(0, 10), rec(0, 11), rec(0, 12)], &mut first);
        assert_eq!(first, [false, false, true]);
        // Offsets 1..=3 of partition 1 skipped.
        ledger.account(&[rec(1, 4), rec(7, 0)], &mut first);
        assert_eq!(first, [true, false]);
        assert!(!ledger.done(), "no ends yet");
        ledger.set_ends(&[13, 8]);
        assert!(!ledger.done());
        let t = ledger.totals();
        assert_eq!(
            (t.received, t.duplicates, t.gaps, t.missing, t.unexpected),
            (8, 2, 3, 3, 1)
        );
        ledger.account(&[rec(1, 5), rec(1, 6), rec(1, 7)], &mut first);
        assert!(ledger.done());
        assert_eq!(ledger.totals().missing, 0);
    }

    #[test]
    fn rebalances_span_their_members_and_start_at_a_leave() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut r = Rebalances::default();
        r.transition(2, ms(100), ms(300));
        r.transition(2, ms(150), ms(400));
        r.leave(ms(900));
        r.transition(3, ms(1000), ms(1200));
        let (times, untimed) = r.summary();
        assert_eq!(untimed, 0);
        let got: Vec<(i32, u64)> = times
            .iter()
            .map(|t| (t.generation, t.ms.round() as u64))
            .collect();
        assert_eq!(got, [(2, 300), (3, 300)]);
    }
}
