//! A controller quorum over real QUIC on 127.0.0.1: one thread and compio runtime per node,
//! certificates generated into a tempdir, data dirs on disk. A "crash" drops the node's
//! runtime without closing anything (its UDP socket must be free afterwards); a clean restart
//! shuts the driver down and starts a new one on the same runtime and the same peer port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::LocalBoxFuture;
use sluice_replication::NodeId;
use sluice_replication::cert;
use sluice_replication::controller::{
    BrokerHeartbeat, BrokerRegistration, ClusterState, Controller, ControllerConfig,
    ControllerDriver, DriverError, DriverStats,
};
use sluice_replication::tls::PeerTls;
use sluice_replication::transport::{
    FrameKind, PEER_ENDPOINT_SHUTDOWN_TIMEOUT, PeerConfig, PeerEndpoint, PeerEndpointStats,
};

type Job = Box<dyn FnOnce(Rc<ControllerDriver>) -> LocalBoxFuture<'static, ()> + Send>;

/// What a node's thread publishes every few milliseconds.
#[derive(Debug, Clone, Default)]
struct View {
    /// Which life of the node on its thread this is: 1, then +1 per clean restart.
    life: u32,
    leader: Option<NodeId>,
    term: u64,
    applied: u64,
    state: ClusterState,
    stats: DriverStats,
    endpoint: PeerEndpointStats,
    /// How long the last clean `shutdown` took.
    last_shutdown: Option<Duration>,
}

/// `Node::control` values.
const RUN: u8 = 0;
/// Drop the runtime with everything in it: no close is sent.
const CRASH: u8 = 1;
/// `ControllerDriver::shutdown`, then a new driver on the same runtime and port.
const RESTART: u8 = 2;

struct Node {
    id: NodeId,
    jobs: mpsc::Sender<Job>,
    view: Arc<Mutex<View>>,
    control: Arc<AtomicU8>,
    heartbeating: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn peer_config() -> PeerConfig {
    PeerConfig {
        idle_timeout: Duration::from_secs(3),
        keep_alive_interval: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        frame_read_timeout: Duration::from_secs(3),
    }
}

fn controller_config() -> ControllerConfig {
    ControllerConfig {
        broker_session_timeout: Duration::from_secs(3),
        ..ControllerConfig::default()
    }
}

fn registration(id: NodeId, incarnation: u64) -> BrokerRegistration {
    BrokerRegistration {
        id,
        incarnation,
        client_host: "127.0.0.1".into(),
        client_port: 9092,
        shards: 1,
        shard_ports: Vec::new(),
        peer_host: "127.0.0.1".into(),
        peer_port: 19092,
    }
}

impl Node {
    /// Starts node `id` on its own thread, from `data` (created on first use), bound to its
    /// address in `voters`; it heartbeats as a broker (incarnation `incarnation`, +1 per
    /// clean restart) every 300 ms while `heartbeating` is set.
    fn start(
        id: NodeId,
        certs: &Path,
        data: PathBuf,
        voters: &[(NodeId, SocketAddr)],
        incarnation: u64,
    ) -> Node {
        let certs = certs.to_path_buf();
        let voters = voters.to_vec();
        let (jobs, rx) = mpsc::channel::<Job>();
        let view = Arc::new(Mutex::new(View::default()));
        let control = Arc::new(AtomicU8::new(RUN));
        let heartbeating = Arc::new(AtomicBool::new(true));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let view = Arc::clone(&view);
            let control = Arc::clone(&control);
            let heartbeating = Arc::clone(&heartbeating);
            std::thread::spawn(move || {
                let runtime = compio::runtime::Runtime::new().expect("runtime");
                runtime.block_on(async move {
                    let life = Life {
                        id,
                        certs,
                        data,
                        voters,
                        view,
                        control,
                        heartbeating,
                        jobs: rx,
                    };
                    let mut incarnation = incarnation;
                    for n in 1.. {
                        match life.run(n, incarnation, &ready_tx).await {
                            CRASH => return,
                            _ => incarnation += 1,
                        }
                    }
                });
                // The runtime is dropped here: on a crash, with the driver and its endpoint
                // still in its tasks.
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("node started");
        Node {
            id,
            jobs,
            view,
            control,
            heartbeating,
            thread: Some(thread),
        }
    }

    fn view(&self) -> View {
        self.view.lock().expect("view").clone()
    }

    /// Runs `f` on the node's runtime and returns its result.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(Rc<ControllerDriver>) -> LocalBoxFuture<'static, T> + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |d| {
            async move {
                let _ = tx.send(f(d).await);
            }
            .boxed_local()
        });
        self.jobs.send(job).expect("node alive");
        rx.recv_timeout(Duration::from_secs(30))
            .expect("job answered")
    }

    /// Drops the node's runtime with its driver, endpoint and connections still in its
    /// tasks: no close is sent, nothing is shut down. Dropping the runtime drops them all,
    /// so the peer port is free (once the kernel has torn the io_uring down), as after a
    /// real crash.
    fn crash(&mut self) {
        self.control.store(CRASH, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("node thread");
        }
    }

    /// Shuts the driver down cleanly and starts a new one on the same thread, runtime, data
    /// dir and peer port (binding it once, no retry); waits until it runs.
    fn restart_in_process(&self) {
        let life = self.view().life;
        self.control.store(RESTART, Ordering::SeqCst);
        wait_until("the node's next life", Duration::from_secs(20), || {
            (self.view().life > life).then_some(())
        });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.control.store(CRASH, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a node's thread runs, one driver ("life") after another.
struct Life {
    id: NodeId,
    certs: PathBuf,
    data: PathBuf,
    voters: Vec<(NodeId, SocketAddr)>,
    view: Arc<Mutex<View>>,
    control: Arc<AtomicU8>,
    heartbeating: Arc<AtomicBool>,
    jobs: mpsc::Receiver<Job>,
}

impl Life {
    /// Runs life `n` until the node is told to crash or restart; returns which.
    async fn run(&self, n: u32, incarnation: u64, ready: &mpsc::Sender<()>) -> u8 {
        let id = self.id;
        let ids: Vec<NodeId> = self.voters.iter().map(|v| v.0).collect();
        let addr = self
            .voters
            .iter()
            .find(|v| v.0 == id)
            .expect("own address")
            .1;
        let controller = Controller::open(&self.data, id, &ids, controller_config()).expect("open");
        let tls = PeerTls::load(&self.certs, id).expect("tls");
        // One try: a crashed or cleanly shut down predecessor must have freed the port.
        let endpoint = PeerEndpoint::bind_with(addr, &tls, &[], peer_config())
            .await
            .unwrap_or_else(|e| panic!("node {id} life {n}: bind {addr}: {e}"));
        let driver =
            Rc::new(ControllerDriver::start(controller, endpoint, &self.voters).expect("start"));
        let heartbeats = {
            let driver = Rc::clone(&driver);
            let heartbeating = Arc::clone(&self.heartbeating);
            compio::runtime::spawn(async move {
                loop {
                    if heartbeating.load(Ordering::SeqCst) {
                        let hb = BrokerHeartbeat {
                            registration: registration(id, incarnation),
                            want_unfence: true,
                        };
                        let _ = driver.broker_heartbeat(&hb).await;
                    }
                    compio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        };
        let last_shutdown = self.view.lock().expect("view").last_shutdown;
        let mut announced = false;
        loop {
            match self.control.load(Ordering::SeqCst) {
                CRASH => {
                    // Leave the driver in the heartbeat task: the runtime drops it.
                    heartbeats.detach();
                    return CRASH;
                }
                RESTART => break,
                _ => {}
            }
            *self.view.lock().expect("view") = View {
                life: n,
                leader: driver.leader(),
                term: driver.term(),
                applied: driver.applied_index(),
                state: driver.state().clone(),
                stats: driver.stats(),
                endpoint: driver.endpoint().map(|e| e.stats()).unwrap_or_default(),
                last_shutdown,
            };
            if !announced {
                let _ = ready.send(());
                announced = true;
            }
            while let Ok(job) = self.jobs.try_recv() {
                compio::runtime::spawn(job(Rc::clone(&driver))).detach();
            }
            compio::time::sleep(Duration::from_millis(10)).await;
        }
        // A clean restart: shut down (the port is free once this returns), drop the old
        // driver and its controller, then the caller starts the next life.
        let t = Instant::now();
        driver
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("node {id}: clean shutdown: {e}"));
        let took = t.elapsed();
        let _ = heartbeats.cancel().await;
        drop(driver);
        self.view.lock().expect("view").last_shutdown = Some(took);
        self.control.store(RUN, Ordering::SeqCst);
        RESTART
    }
}

/// Whether `addr` can be bound (UDP) right now.
fn port_free(addr: SocketAddr) -> bool {
    std::net::UdpSocket::bind(addr).is_ok()
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("udp"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect()
}

fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The leader all `nodes` agree on.
fn agreed_leader(nodes: &[&Node]) -> Option<NodeId> {
    let leaders: Vec<Option<NodeId>> = nodes.iter().map(|n| n.view().leader).collect();
    let first = leaders[0]?;
    leaders.iter().all(|l| *l == Some(first)).then_some(first)
}

struct Cluster {
    _certs: tempfile::TempDir,
    _data: tempfile::TempDir,
    certs: PathBuf,
    data: PathBuf,
    voters: Vec<(NodeId, SocketAddr)>,
    nodes: BTreeMap<NodeId, Node>,
}

impl Cluster {
    fn start(extra_certs: &[NodeId]) -> Cluster {
        let certs = tempfile::tempdir().expect("tempdir");
        let mut names = vec![0, 1, 2];
        names.extend_from_slice(extra_certs);
        cert::write_dev(certs.path(), &names, false).expect("certs");
        let data = tempfile::tempdir().expect("tempdir");
        let voters: Vec<(NodeId, SocketAddr)> = (0..3).zip(free_addrs(3)).collect();
        let mut cluster = Cluster {
            certs: certs.path().to_path_buf(),
            data: data.path().to_path_buf(),
            _certs: certs,
            _data: data,
            voters,
            nodes: BTreeMap::new(),
        };
        for id in 0..3 {
            cluster.start_node(id, 1);
        }
        cluster
    }

    fn start_node(&mut self, id: NodeId, incarnation: u64) {
        let node = Node::start(
            id,
            &self.certs,
            self.data.join(format!("node-{id}")),
            &self.voters,
            incarnation,
        );
        self.nodes.insert(id, node);
    }

    fn live(&self) -> Vec<&Node> {
        self.nodes.values().collect()
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    fn wait_leader(&self, limit: Duration) -> NodeId {
        wait_until("an agreed leader", limit, || agreed_leader(&self.live()))
    }

    /// Waits until every live node holds the same state, in which all brokers in `unfenced`
    /// are unfenced and `check` holds; returns it.
    fn wait_converged(
        &self,
        what: &str,
        limit: Duration,
        unfenced: &[NodeId],
        check: impl Fn(&ClusterState) -> bool,
    ) -> ClusterState {
        wait_until(what, limit, || {
            let views: Vec<View> = self.live().iter().map(|n| n.view()).collect();
            let first = &views[0].state;
            let same = views.iter().all(|v| v.state == *first);
            let up = unfenced
                .iter()
                .all(|b| first.brokers.get(b).is_some_and(|i| !i.fenced));
            (same && up && check(first)).then(|| first.clone())
        })
    }
}

fn create_topic(node: &Node, name: &'static str, partitions: u32, rf: u32) -> u64 {
    node.run(move |d| {
        async move {
            d.create_topic(name, partitions, rf, BTreeMap::new())
                .await
                .map_err(|e| e.to_string())
        }
        .boxed_local()
    })
    .unwrap_or_else(|e| panic!("create {name} through node {}: {e}", node.id))
}

#[test]
fn a_quorum_elects_forwards_fails_over_fences_and_catches_up() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_leader(Duration::from_secs(15));
    let state = cluster.wait_converged(
        "all brokers unfenced",
        Duration::from_secs(15),
        &[0, 1, 2],
        |_| true,
    );
    assert_eq!(state.brokers.len(), 3);

    // A topic created through a follower is forwarded and applied on all three alike.
    let follower = (0..3).find(|n| *n != leader).expect("a follower");
    let index = create_topic(cluster.node(follower), "orders", 6, 3);
    let state = cluster.wait_converged(
        "orders everywhere",
        Duration::from_secs(10),
        &[0, 1, 2],
        |s| s.topics.contains_key("orders"),
    );
    let orders = &state.topics["orders"];
    assert_eq!(orders.partitions.len(), 6);
    for p in &orders.partitions {
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(p.isr.len(), 3);
        assert!(p.leader.is_some());
    }
    assert!(cluster.live().iter().all(|n| n.view().applied >= index));
    assert!(cluster.node(leader).view().stats.forwards_served >= 1);

    // A partition leader on a node that is not the active controller shrinks its ISR
    // (AlterPartition, forwarded), is refused with a stale partition epoch or when it is
    // not the leader, then expands the ISR back.
    let (p, part) = orders
        .partitions
        .iter()
        .enumerate()
        .find(|(_, part)| part.leader != Some(leader))
        .expect("a partition led by a follower of the quorum");
    let p = p as u32;
    let part_leader = part.leader.expect("leader");
    let dropped = *part
        .isr
        .iter()
        .find(|r| **r != part_leader)
        .expect("another ISR member");
    let alter = |node: NodeId, epochs: (u32, u32), isr: Vec<NodeId>| {
        cluster.node(node).run(move |d| {
            async move {
                d.alter_partition("orders", p, epochs.0, epochs.1, isr)
                    .await
                    .map_err(|e| e.kafka_code())
            }
            .boxed_local()
        })
    };
    let shrunk: Vec<NodeId> = part.isr.iter().copied().filter(|r| *r != dropped).collect();
    let epochs = (part.leader_epoch, part.partition_epoch);
    alter(part_leader, epochs, shrunk.clone()).expect("ISR shrink applied");
    let state =
        cluster.wait_converged("the shrunk ISR", Duration::from_secs(10), &[0, 1, 2], |s| {
            s.topics["orders"].partitions[p as usize].isr == shrunk
        });
    let now = &state.topics["orders"].partitions[p as usize];
    assert_eq!(now.partition_epoch, part.partition_epoch + 1);
    assert_eq!(now.leader_epoch, part.leader_epoch);
    // The old partition epoch: INVALID_UPDATE_VERSION (108).
    assert_eq!(alter(part_leader, epochs, part.isr.clone()), Err(108));
    // Not the leader: FENCED_LEADER_EPOCH (74).
    let new_epochs = (now.leader_epoch, now.partition_epoch);
    assert_eq!(alter(dropped, new_epochs, part.isr.clone()), Err(74));
    alter(part_leader, new_epochs, part.isr.clone()).expect("ISR expand applied");
    cluster.wait_converged("the ISR back", Duration::from_secs(10), &[0, 1, 2], |s| {
        s.topics["orders"].partitions[p as usize].isr == part.isr
    });
    let led_by_old: Vec<usize> = (0..6)
        .filter(|p| orders.partitions[*p].leader == Some(leader))
        .collect();
    assert!(
        !led_by_old.is_empty(),
        "round-robin gives the leader some partitions"
    );

    // Crash the leader: the other two elect a new one and keep committing.
    let old_term = cluster.node(follower).view().term;
    let mut crashed = cluster.nodes.remove(&leader).expect("leader node");
    let t0 = Instant::now();
    crashed.crash();
    drop(crashed);
    // The kernel releases the socket when it tears the dropped runtime's io_uring down
    // (its pending receive holds a reference), in the background: within microseconds.
    let crashed_addr = cluster.voters[leader as usize].1;
    wait_until(
        "the crashed node's peer port free",
        Duration::from_secs(1),
        || port_free(crashed_addr).then_some(()),
    );
    let new_leader = wait_until("a new leader", Duration::from_secs(15), || {
        agreed_leader(&cluster.live()).filter(|l| *l != leader)
    });
    let failover = t0.elapsed();
    println!("failover: node {new_leader} leads {failover:?} after node {leader} crashed");
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    assert!(cluster.node(new_leader).view().term > old_term);
    let survivor = (0..3)
        .find(|n| *n != leader && *n != new_leader)
        .expect("survivor");
    create_topic(cluster.node(survivor), "after-crash", 2, 2);

    // The crashed broker's heartbeats stopped: it is fenced, and its partitions are led by
    // ISR members.
    let state = cluster.wait_converged(
        "the crashed broker fenced",
        Duration::from_secs(15),
        &[],
        |s| s.brokers[&leader].fenced && s.topics.contains_key("after-crash"),
    );
    for p in &led_by_old {
        let part = &state.topics["orders"].partitions[*p];
        let l = part.leader.expect("a new leader");
        assert_ne!(l, leader);
        assert!(part.isr.contains(&l));
        assert!(!part.isr.contains(&leader));
    }
    assert!(state.topics.contains_key("after-crash"));

    // Restart it from its data dir on a new thread: it catches up and is unfenced.
    let t1 = Instant::now();
    cluster.start_node(leader, 2);
    let state = cluster.wait_converged(
        "the restarted node caught up",
        Duration::from_secs(20),
        &[0, 1, 2],
        |s| {
            s.topics.contains_key("after-crash") && s.brokers[&leader].registration.incarnation == 2
        },
    );
    println!("restarted node {leader} caught up in {:?}", t1.elapsed());
    assert!(state.topics.contains_key("after-crash"));
    assert_eq!(state.brokers[&leader].registration.incarnation, 2);
    // Its heartbeats stop now: fenced; they resume: unfenced.
    cluster
        .node(leader)
        .heartbeating
        .store(false, Ordering::SeqCst);
    cluster.wait_converged("fenced after silence", Duration::from_secs(15), &[], |s| {
        s.brokers[&leader].fenced
    });
    cluster
        .node(leader)
        .heartbeating
        .store(true, Ordering::SeqCst);
    cluster.wait_converged(
        "unfenced again",
        Duration::from_secs(15),
        &[0, 1, 2],
        |_| true,
    );
}

#[test]
fn a_non_voter_is_refused_and_garbage_frames_are_dropped() {
    const OUTSIDER: NodeId = 7;
    let cluster = Cluster::start(&[OUTSIDER]);
    let leader = cluster.wait_leader(Duration::from_secs(15));
    cluster.wait_converged(
        "all brokers unfenced",
        Duration::from_secs(15),
        &[0, 1, 2],
        |_| true,
    );
    let target = (0..3).find(|n| *n != leader).expect("a follower");
    let target_addr = cluster.voters[target as usize].1;
    let certs = cluster.certs.clone();

    let runtime = compio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // A node with a valid certificate that is not a voter: refused.
        let tls = PeerTls::load(&certs, OUTSIDER).expect("tls");
        let outsider = PeerEndpoint::bind_with(
            "127.0.0.1:0".parse().expect("addr"),
            &tls,
            &[],
            peer_config(),
        )
        .await
        .expect("bind");
        let refused = match outsider.connect(target_addr, target).await {
            Err(_) => true,
            Ok(conn) => conn
                .request(FrameKind::ControllerForward, Bytes::from_static(b"x"))
                .await
                .is_err(),
        };
        assert!(refused, "a non-voter's request must fail");

        // A voter (node 1's certificate, as if from a second endpoint) sending garbage.
        let voter = (0..3).find(|n| *n != target).expect("voter");
        let tls = PeerTls::load(&certs, voter).expect("tls");
        let ep = PeerEndpoint::bind_with(
            "127.0.0.1:0".parse().expect("addr"),
            &tls,
            &[],
            peer_config(),
        )
        .await
        .expect("bind");
        let conn = ep
            .connect(target_addr, target)
            .await
            .expect("voter connects");
        let mut stream = conn.open_oneway().await.expect("stream");
        for i in 0..50u8 {
            let body = Bytes::from(vec![0xff, i, 0x13, 0x37, 0, 1, 2, 3]);
            stream
                .send(FrameKind::RaftMessage, body)
                .await
                .expect("send garbage");
        }
        // A frame of a kind the controller does not take one-way.
        stream
            .send(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"nope"))
            .await
            .expect("send");
        stream.finish();
        // A garbage forwarded request gets an error answer, not a crash.
        let answer = conn
            .request(
                FrameKind::ControllerForward,
                Bytes::from_static(b"\x01garbage"),
            )
            .await;
        assert!(answer.is_err(), "garbage forward answered {answer:?}");
        compio::time::sleep(Duration::from_millis(500)).await;
        conn.close();
    });

    let view = wait_until("refusals counted", Duration::from_secs(10), || {
        let v = cluster.node(target).view();
        (v.stats.frames_refused >= 51 && v.endpoint.refused_nodes >= 1).then_some(v)
    });
    println!(
        "target stats {:?}, endpoint {:?}",
        view.stats, view.endpoint
    );
    // The quorum keeps working: a topic created through the garbage's target.
    create_topic(cluster.node(target), "still-works", 3, 3);
    let state = cluster.wait_converged(
        "still-works everywhere",
        Duration::from_secs(10),
        &[0, 1, 2],
        |s| s.topics.contains_key("still-works"),
    );
    assert!(state.topics.contains_key("still-works"));
    assert_eq!(
        agreed_leader(&cluster.live()),
        Some(leader),
        "garbage must not cost the leader"
    );

    // A rejection travels back through the forward with Kafka's code (TOPIC_ALREADY_EXISTS).
    let code = cluster.node(target).run(|d| {
        async move {
            d.create_topic("still-works", 1, 1, BTreeMap::new())
                .await
                .map_err(|e| e.kafka_code())
        }
        .boxed_local()
    });
    assert_eq!(code, Err(36));

    // A clean close: the node answers Stopped, the other two keep committing.
    let closed = cluster.node(target).run(|d| {
        async move {
            d.close();
            d.delete_topic("still-works")
                .await
                .map_err(|e| matches!(e, DriverError::Stopped))
        }
        .boxed_local()
    });
    assert_eq!(closed, Err(true));
    let other = (0..3).find(|n| *n != target).expect("another node");
    let index = cluster.node(other).run(|d| {
        async move {
            d.delete_topic("still-works")
                .await
                .map_err(|e| e.to_string())
        }
        .boxed_local()
    });
    assert!(index.is_ok(), "delete through node {other}: {index:?}");
    wait_until("deleted on the two", Duration::from_secs(10), || {
        let gone = (0..3).filter(|n| *n != target).all(|n| {
            !cluster
                .node(n)
                .view()
                .state
                .topics
                .contains_key("still-works")
        });
        gone.then_some(())
    });

    // Clean restarts in process, each on the same runtime and peer port: the closed node
    // (its endpoint long released), then the leader while it is busy leading (shutdown
    // closes its connections; the port must be free once `shutdown` returns).
    for node in [target, leader] {
        cluster.node(node).restart_in_process();
        let took = cluster
            .node(node)
            .view()
            .last_shutdown
            .expect("shutdown time");
        println!("node {node}: clean shutdown took {took:?}, rebound its port");
        assert!(
            took < PEER_ENDPOINT_SHUTDOWN_TIMEOUT,
            "shutdown took {took:?}"
        );
        let state = cluster.wait_converged(
            "the restarted node back and unfenced",
            Duration::from_secs(20),
            &[0, 1, 2],
            |s| s.brokers[&node].registration.incarnation == 2,
        );
        assert!(!state.topics.contains_key("still-works"));
    }
    create_topic(cluster.node(leader), "after-restarts", 1, 3);
    cluster.wait_converged(
        "after-restarts everywhere",
        Duration::from_secs(10),
        &[0, 1, 2],
        |s| s.topics.contains_key("after-restarts"),
    );
}
