//! Properties of the worker's diffing of resolver updates, with a connector that records every
//! attempt and never completes one: after any sequence of `Reset`, `Add` and `Remove`, the
//! balancer holds one sub-channel per instance at its current address and nothing else, and a
//! `Reset` that keeps an instance keeps its sub-channel (no new connection attempt).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use switchboard_resolver::{Instance, Resolution, Update};

use crate::Balancer;
use crate::connect::{BoxFuture, Connection, Connector};

/// Records the address of every connection attempt; none ever completes.
#[derive(Clone, Default)]
struct Recorder {
    attempts: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn attempts(&self) -> usize {
        self.attempts.lock().expect("lock").len()
    }
}

impl Connector for Recorder {
    type Sender = ();

    fn connect(
        &self,
        addr: &str,
        _: Option<Duration>,
    ) -> BoxFuture<Result<Connection<()>, String>> {
        self.attempts.lock().expect("lock").push(addr.to_owned());
        Box::pin(std::future::pending())
    }
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

/// The model: key → address version, and how many sub-channels were created so far.
#[derive(Default)]
struct Model {
    held: BTreeMap<u8, u8>,
    created: usize,
}

impl Model {
    /// Applies `op`; returns the update the resolver would send, and the keys whose
    /// sub-channel it must create anew.
    fn apply(&mut self, op: &Op) -> (Update, Vec<u8>) {
        let mut fresh = Vec::new();
        let update = match op {
            Op::Reset(list) => {
                for (k, v) in list {
                    if self.held.get(k) != Some(v) {
                        self.created += 1;
                        fresh.push(*k);
                    }
                }
                self.held = list.clone();
                Update::Reset(
                    list.iter()
                        .map(|(k, v)| Instance::new(key(*k), addr(*k, *v)))
                        .collect(),
                )
            }
            Op::Add(k, v) => {
                if self.held.insert(*k, *v) != Some(*v) {
                    self.created += 1;
                    fresh.push(*k);
                }
                Update::Add(Instance::new(key(*k), addr(*k, *v)))
            }
            Op::Remove(k) => {
                self.held.remove(k);
                Update::Remove(key(*k))
            }
        };
        (update, fresh)
    }

    fn pairs(&self) -> Vec<(String, String)> {
        self.held
            .iter()
            .map(|(k, v)| (key(*k), addr(*k, *v)))
            .collect()
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let recorder = Recorder::default();
        let (publisher, resolution) = Resolution::channel();
        let (inner, _close) = Balancer::builder()
            .seed(3)
            .spawn(resolution, recorder.clone());
        let mut model = Model::default();
        // The sub-channel id of each key after the previous op.
        let mut ids: BTreeMap<String, u64> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let (update, fresh) = model.apply(op);
            prop_assert!(publisher.send(update).await.is_ok(), "the worker is gone");
            let expected = model.pairs();
            let start = Instant::now();
            loop {
                let snapshot = inner.snapshot();
                let mut held: Vec<(String, String)> = snapshot
                    .subchannels
                    .iter()
                    .map(|s| (s.key.clone(), s.addr.clone()))
                    .collect();
                held.sort();
                // This update applied (not an earlier state that happens to match), every
                // sub-channel it drained gone, and exactly the connections it called for.
                let applied = snapshot.updates_applied == i as u64 + 1;
                if applied && held == expected && recorder.attempts() == model.created {
                    // A kept instance kept its sub-channel; a new or moved one has a new one.
                    let now: BTreeMap<String, u64> = snapshot
                        .subchannels
                        .iter()
                        .map(|s| (s.key.clone(), s.id))
                        .collect();
                    for (k, id) in &now {
                        let renewed = fresh.iter().any(|f| key(*f) == *k);
                        let before = ids.get(k);
                        prop_assert!(
                            renewed != (before == Some(id)),
                            "after op {i} of {ops:?}: {k} has sub-channel {id}, before {before:?}, expected {}",
                            if renewed { "a new one" } else { "the same" }
                        );
                    }
                    ids = now;
                    break;
                }
                prop_assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "after op {i} of {ops:?}: {} updates applied; held {held:?}, expected {expected:?}; {} attempts, expected {}",
                    snapshot.updates_applied,
                    recorder.attempts(),
                    model.created
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn updates_leave_one_subchannel_per_instance_and_keep_the_unchanged(
        ops in proptest::collection::vec(op(), 1..10)
    ) {
        run(ops)?;
    }
}

#[test]
fn a_reset_to_the_same_list_reconnects_nothing() -> Result<(), TestCaseError> {
    let list: BTreeMap<u8, u8> = (0..KEYS).map(|k| (k, 0)).collect();
    run(vec![
        Op::Reset(list.clone()),
        Op::Reset(list.clone()),
        Op::Reset(list),
    ])
}

#[test]
fn a_reset_moves_changed_addresses_and_drops_the_missing() -> Result<(), TestCaseError> {
    let first: BTreeMap<u8, u8> = [(0, 0), (1, 0), (2, 0)].into();
    let second: BTreeMap<u8, u8> = [(0, 0), (1, 1), (3, 0)].into();
    run(vec![
        Op::Reset(first),
        Op::Reset(second),
        Op::Reset(BTreeMap::new()),
    ])
}
