//! The control core driven by hand: every input is a call with the time given, every output an
//! action recorded by a mock [`Io`]. No task, no clock, no sleep.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use switchboard_resolver::{Instance, Update};

use super::*;
use ConnectivityState::{Connecting, Idle, Ready, Shutdown, TransientFailure};

mod policies;

/// A READY connection, as pickers hold it: the id of its sub-channel.
#[derive(Clone, Debug, PartialEq)]
struct Conn(u64);

impl Endpoint for Conn {
    fn in_flight(&self) -> u64 {
        0
    }
    fn weight(&self) -> u32 {
        1
    }
    fn rtt_estimate(&self, _: std::time::Instant) -> Option<f64> {
        None
    }
}

/// What the core asked of its I/O.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    Start { id: u64, addr: String, order: Order },
    Order { id: u64, order: Order },
    Weight { id: u64, weight: u32 },
    Ejected { id: u64 },
}

/// What a published picker does.
#[derive(Clone, Debug, PartialEq)]
enum Picks {
    /// Picks among these sub-channels.
    From(Vec<u64>),
    Queue,
    Fail(String),
}

struct Handle {
    id: u64,
    calls: Arc<Mutex<Calls>>,
}

#[derive(Default)]
struct Mock {
    actions: Vec<Action>,
    state: Option<ConnectivityState>,
    picks: Option<Picks>,
    /// Call counters of every sub-channel started, by id.
    calls: BTreeMap<u64, Arc<Mutex<Calls>>>,
}

impl Io for Mock {
    type Handle = Handle;
    type Ready = Conn;

    fn start(&mut self, id: u64, instance: &Instance, order: Order) -> Option<Handle> {
        if instance.addr.starts_with("bad") {
            return None;
        }
        self.actions.push(Action::Start {
            id,
            addr: instance.addr.clone(),
            order,
        });
        let calls = Arc::new(Mutex::new(Calls::default()));
        self.calls.insert(id, calls.clone());
        Some(Handle { id, calls })
    }

    fn order(&mut self, handle: &Handle, order: Order) {
        self.actions.push(Action::Order {
            id: handle.id,
            order,
        });
    }

    fn set_weight(&mut self, handle: &Handle, weight: u32) {
        self.actions.push(Action::Weight {
            id: handle.id,
            weight,
        });
    }

    fn ejected(&mut self, handle: &Handle) {
        self.actions.push(Action::Ejected { id: handle.id });
    }

    fn calls(handle: &Handle) -> Calls {
        *handle.calls.lock().expect("calls")
    }

    fn publish(&mut self, publication: Publication<Conn>) {
        self.state = Some(publication.state);
        if let Some(snapshot) = publication.snapshot {
            self.picks = Some(match snapshot {
                Snapshot::Pick(picker) => {
                    Picks::From(picker.endpoints().iter().map(|c| c.0).collect())
                }
                Snapshot::Queue => Picks::Queue,
                Snapshot::Fail(status) => Picks::Fail(status.message().to_owned()),
            });
        }
    }
}

/// A core with its mock I/O and a clock moved by hand.
struct Rig {
    core: Core<Mock>,
    io: Mock,
    t0: Instant,
    now: Instant,
}

fn config(policy: Policy) -> Config {
    Config {
        target: "svc".into(),
        policy,
        drain_timeout: Duration::from_secs(30),
        health_checked: false,
        outlier: None,
        pick_first: PickFirstOptions::default(),
        choice_count: 2,
        ring: (100, 1 << 18),
        custom: None,
        subset_size: None,
        locality: None,
    }
}

fn rig(config: Config) -> Rig {
    let t0 = Instant::now();
    Rig {
        core: Core::new(Arc::new(config), 7, t0),
        io: Mock::default(),
        t0,
        now: t0,
    }
}

fn inst(key: &str, addr: &str) -> Instance {
    Instance::new(key, addr)
}

impl Rig {
    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.tick(&mut self.io, self.now);
        self.core.publish(&mut self.io);
    }

    fn update(&mut self, update: Update) {
        self.core.update(&mut self.io, update, self.now);
        self.core.publish(&mut self.io);
    }

    fn reset(&mut self, list: &[(&str, &str)]) {
        self.update(Update::Reset(
            list.iter().map(|(k, a)| inst(k, a)).collect(),
        ));
    }

    /// The sub-channel `id` of `key` reports `state` (READY with a connection).
    fn report(&mut self, key: &str, id: u64, state: ConnectivityState, error: Option<&str>) {
        let conn = (state == Ready).then_some(Conn(id));
        let error = error.map(str::to_owned);
        self.core
            .link(&mut self.io, (key, id), state, conn, error, self.now);
        self.core.publish(&mut self.io);
    }

    fn health(&mut self, key: &str, id: u64, health: Health, why: Option<&str>) {
        let why = why.map(str::to_owned);
        self.core
            .health(&mut self.io, (key, id), health, why, self.now);
        self.core.publish(&mut self.io);
    }

    fn actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.io.actions)
    }

    fn state(&self) -> ConnectivityState {
        self.io.state.expect("a state was published")
    }

    fn picks(&self) -> Picks {
        self.io.picks.clone().expect("a picker was published")
    }

    fn ids(&self) -> Vec<(String, u64, ConnectivityState)> {
        self.core
            .subchannels(|_| 0)
            .into_iter()
            .map(|s| (s.addr, s.id, s.state))
            .collect()
    }
}

fn start(id: u64, addr: &str, order: Order) -> Action {
    Action::Start {
        id,
        addr: addr.into(),
        order,
    }
}

fn order(id: u64, order: Order) -> Action {
    Action::Order { id, order }
}

#[test]
fn before_the_first_resolution_the_channel_is_connecting_and_with_none_it_fails() {
    let mut r = rig(config(Policy::RoundRobin));
    r.core.publish(&mut r.io);
    assert_eq!(r.io.state, None, "nothing changed yet: nothing published");
    r.core.resolver(Some("etcd: connection refused".into()));
    r.core.publish(&mut r.io);
    assert_eq!(r.state(), Connecting);
    assert_eq!(r.picks(), Picks::Queue);
    r.reset(&[]);
    assert_eq!(r.state(), TransientFailure);
    assert_eq!(
        r.picks(),
        Picks::Fail("no instances of svc (resolver: etcd: connection refused)".into())
    );
}

#[test]
fn instances_get_a_subchannel_each_and_ready_ones_are_picked() {
    let mut r = rig(config(Policy::RoundRobin));
    r.reset(&[("a", "10.0.0.1:1"), ("b", "10.0.0.2:1"), ("c", "bad")]);
    assert_eq!(
        r.actions(),
        [
            start(1, "10.0.0.1:1", Order::Run),
            start(2, "10.0.0.2:1", Order::Run)
        ],
        "an address that cannot be dialled gets no sub-channel"
    );
    r.report("a", 1, Connecting, None);
    r.report("b", 2, Connecting, None);
    assert_eq!((r.state(), r.picks()), (Connecting, Picks::Queue));
    r.report("b", 2, Ready, None);
    assert_eq!((r.state(), r.picks()), (Ready, Picks::From(vec![2])));
    r.report("a", 1, Ready, None);
    assert_eq!(r.picks(), Picks::From(vec![1, 2]));
    // A report for a sub-channel the core does not know is ignored.
    r.report("a", 99, TransientFailure, Some("late"));
    assert_eq!(r.picks(), Picks::From(vec![1, 2]));
}

#[test]
fn a_removed_instance_leaves_the_picker_at_once_and_the_core_once_shut_down() {
    let mut r = rig(config(Policy::RoundRobin));
    r.reset(&[("a", "10.0.0.1:1"), ("b", "10.0.0.2:1")]);
    r.report("a", 1, Ready, None);
    r.report("b", 2, Ready, None);
    r.actions();
    r.update(Update::Remove("a".into()));
    assert_eq!(r.actions(), [order(1, Order::Drain { by: None })]);
    assert_eq!(r.picks(), Picks::From(vec![2]));
    assert_eq!(r.ids().len(), 2, "listed while draining");
    r.report("a", 1, Shutdown, None);
    assert_eq!(r.ids(), [("10.0.0.2:1".to_owned(), 2, Ready)]);
    // The instance comes back: a new sub-channel.
    r.update(Update::Add(inst("a", "10.0.0.1:1")));
    assert_eq!(r.actions(), [start(3, "10.0.0.1:1", Order::Run)]);
}

#[test]
fn every_instance_failing_makes_the_channel_fail_until_one_is_ready() {
    let mut r = rig(config(Policy::RoundRobin));
    r.reset(&[("a", "10.0.0.1:1"), ("b", "10.0.0.2:1")]);
    r.report("a", 1, Connecting, None);
    r.report("b", 2, Connecting, None);
    r.report("a", 1, TransientFailure, Some("connection refused"));
    assert_eq!(r.state(), Connecting, "b is still on its first attempt");
    r.report("b", 2, TransientFailure, Some("timed out"));
    let failed = Picks::Fail(
        "no READY instance of svc; last connection error: 10.0.0.2:1: timed out".into(),
    );
    assert_eq!((r.state(), r.picks()), (TransientFailure, failed.clone()));
    // Trying again does not make the channel CONNECTING: TRANSIENT_FAILURE is sticky.
    r.report("a", 1, Connecting, None);
    r.report("b", 2, Connecting, None);
    assert_eq!((r.state(), r.picks()), (TransientFailure, failed));
    r.report("a", 1, Ready, None);
    assert_eq!((r.state(), r.picks()), (Ready, Picks::From(vec![1])));
}

#[test]
fn a_moved_instance_serves_on_its_old_address_until_the_new_one_is_ready() {
    let mut r = rig(config(Policy::RoundRobin));
    r.reset(&[("a", "10.0.0.1:1")]);
    r.report("a", 1, Ready, None);
    r.actions();
    r.now += Duration::from_secs(1);
    r.update(Update::Add(inst("a", "10.0.0.9:1")));
    let by = r.now + Duration::from_secs(30);
    assert_eq!(
        r.actions(),
        [
            order(1, Order::Retire { by }),
            start(2, "10.0.0.9:1", Order::Run)
        ]
    );
    assert_eq!(
        r.picks(),
        Picks::From(vec![1]),
        "the old one serves meanwhile"
    );
    r.report("a", 2, Connecting, None);
    r.report("a", 2, Ready, None);
    assert_eq!(r.actions(), [order(1, Order::Drain { by: Some(by) })]);
    assert_eq!(r.picks(), Picks::From(vec![2]));
}

#[test]
fn a_moved_instance_whose_new_address_never_answers_is_closed_by_its_deadline() {
    let mut r = rig(config(Policy::RoundRobin));
    r.reset(&[("a", "10.0.0.1:1")]);
    r.report("a", 1, Ready, None);
    r.update(Update::Add(inst("a", "10.0.0.9:1")));
    r.report("a", 2, Connecting, None);
    r.report("a", 2, TransientFailure, Some("timed out"));
    assert_eq!(r.picks(), Picks::From(vec![1]));
    // Its task closes it by the deadline it was given, and reports SHUTDOWN: no connection
    // to the old address is left, none is made again.
    r.now += Duration::from_secs(30);
    r.report("a", 1, Shutdown, None);
    assert_eq!(
        (r.state(), r.picks().clone()),
        (TransientFailure, r.picks())
    );
    assert!(matches!(r.picks(), Picks::Fail(_)));
    assert_eq!(r.ids(), [("10.0.0.9:1".to_owned(), 2, TransientFailure)]);
    // A move of a sub-channel that is not READY drains it at once.
    r.actions();
    r.update(Update::Add(inst("a", "10.0.0.10:1")));
    assert_eq!(
        r.actions(),
        [
            order(2, Order::Drain { by: None }),
            start(3, "10.0.0.10:1", Order::Run)
        ]
    );
}

#[test]
fn metadata_changes_keep_the_subchannel_and_set_its_weight() {
    let mut r = rig(config(Policy::WeightedRoundRobin));
    r.reset(&[("a", "10.0.0.1:1")]);
    r.actions();
    let heavier =
        inst("a", "10.0.0.1:1").with_metadata([("weight".to_owned(), "5".to_owned())].into());
    r.update(Update::Add(heavier));
    assert_eq!(r.actions(), [Action::Weight { id: 1, weight: 5 }]);
    assert_eq!(r.core.subchannels(|_| 0)[0].weight, 5);
}

#[test]
fn health_checked_connections_are_picked_only_while_serving() {
    let mut r = rig(Config {
        health_checked: true,
        ..config(Policy::RoundRobin)
    });
    r.reset(&[("a", "10.0.0.1:1")]);
    r.report("a", 1, Ready, None);
    assert_eq!((r.state(), r.picks()), (Connecting, Picks::Queue));
    assert_eq!(r.core.subchannels(|_| 0)[0].health, Health::Unknown);
    r.health("a", 1, Health::Serving, None);
    assert_eq!((r.state(), r.picks()), (Ready, Picks::From(vec![1])));
    r.health(
        "a",
        1,
        Health::NotServing,
        Some("the server says NOT_SERVING"),
    );
    assert_eq!(r.state(), TransientFailure);
    assert_eq!(
        r.picks(),
        Picks::Fail(
            "no READY instance of svc; last connection error: 10.0.0.1:1: the server says \
             NOT_SERVING"
                .into()
        )
    );
    // A health report of a connection that is gone is ignored.
    r.report("a", 1, Idle, Some("GOAWAY"));
    r.health("a", 1, Health::Serving, None);
    assert_eq!(r.core.subchannels(|_| 0)[0].health, Health::Unknown);
}

#[test]
fn closing_drains_everything_and_fails_every_rpc() {
    let mut r = rig(config(Policy::RoundRobin));
    r.reset(&[("a", "10.0.0.1:1")]);
    r.report("a", 1, Ready, None);
    r.actions();
    r.core.close(&mut r.io);
    assert_eq!(r.actions(), [order(1, Order::Drain { by: None })]);
    assert_eq!(r.state(), Shutdown);
    assert_eq!(
        r.picks(),
        Picks::Fail("the channel to svc is closed".into())
    );
}

/// One resolver update over keys `0..KEYS`, each at one of `VERSIONS` addresses.
#[derive(Clone, Debug)]
enum Op {
    Reset(BTreeMap<u8, u8>),
    Add(u8, u8),
    Remove(u8),
}

const KEYS: u8 = 6;
const VERSIONS: u8 = 3;

fn key(k: u8) -> String {
    format!("svc/{k}")
}

fn addr(k: u8, version: u8) -> String {
    format!(
        "127.0.0.1:{}",
        10_000 + u16::from(k) * 10 + u16::from(version)
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => proptest::collection::btree_map(0..KEYS, 0..VERSIONS, 0..=KEYS as usize).prop_map(Op::Reset),
        2 => (0..KEYS, 0..VERSIONS).prop_map(|(k, v)| Op::Add(k, v)),
        1 => (0..KEYS).prop_map(Op::Remove),
    ]
}

fn to_update(op: &Op) -> Update {
    match op {
        Op::Reset(list) => Update::Reset(
            list.iter()
                .map(|(k, v)| inst(&key(*k), &addr(*k, *v)))
                .collect(),
        ),
        Op::Add(k, v) => Update::Add(inst(&key(*k), &addr(*k, *v))),
        Op::Remove(k) => Update::Remove(key(*k)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After any sequence of updates, with sub-channels READY or not at random, and those told
    /// to drain reporting SHUTDOWN: one serving sub-channel per instance at its current
    /// address; an instance kept at its address keeps its sub-channel (no new one is
    /// started); a new or moved one gets a new one; every other is told to drain or retire.
    #[test]
    fn updates_leave_one_subchannel_per_instance_and_keep_the_unchanged(
        ops in proptest::collection::vec((op(), any::<bool>()), 1..12)
    ) {
        let mut r = rig(config(Policy::RoundRobin));
        let mut model: BTreeMap<u8, u8> = BTreeMap::new();
        let mut ids: BTreeMap<String, u64> = BTreeMap::new();
        for (op, ready) in &ops {
            let before = model.clone();
            match op {
                Op::Reset(list) => model = list.clone(),
                Op::Add(k, v) => { model.insert(*k, *v); }
                Op::Remove(k) => { model.remove(k); }
            }
            r.update(to_update(op));
            let starts = r.actions().into_iter().filter(|a| matches!(a, Action::Start { .. })).count();
            let fresh = model.iter().filter(|(k, v)| before.get(k) != Some(v)).count();
            prop_assert_eq!(starts, fresh, "after {:?}", op);
            // The new sub-channels report; drained and retired ones shut down.
            for sub in r.core.subchannels(|_| 0) {
                let serving = model.iter().any(|(k, v)| key(*k) == sub.key && addr(*k, *v) == sub.addr);
                if !serving {
                    r.report(&sub.key, sub.id, Shutdown, None);
                } else if *ready && sub.state == Idle {
                    r.report(&sub.key, sub.id, Ready, None);
                }
            }
            let held: BTreeMap<String, (String, u64)> = r
                .core
                .subchannels(|_| 0)
                .into_iter()
                .map(|s| (s.key, (s.addr, s.id)))
                .collect();
            let expected: Vec<(String, String)> = model.iter().map(|(k, v)| (key(*k), addr(*k, *v))).collect();
            let got: Vec<(String, String)> = held.iter().map(|(k, (a, _))| (k.clone(), a.clone())).collect();
            prop_assert_eq!(&got, &expected);
            for (k, (_, id)) in &held {
                let kept = ids.get(k) == Some(id);
                let unchanged = before.iter().any(|(bk, bv)| key(*bk) == *k && model.get(bk) == Some(bv));
                prop_assert_eq!(kept, unchanged, "{} after {:?}", k, op);
            }
            ids = held.into_iter().map(|(k, (_, id))| (k, id)).collect();
        }
    }
}
