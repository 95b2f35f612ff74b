//! The core's policies driven by hand: pick_first's one-at-a-time connections, subsetting,
//! locality and outlier detection.

use super::*;

#[test]
fn pick_first_connects_one_instance_at_a_time_in_order() {
    let mut r = rig(config(Policy::PickFirst));
    r.reset(&[
        ("a", "10.0.0.1:1"),
        ("b", "10.0.0.2:1"),
        ("c", "10.0.0.3:1"),
    ]);
    assert_eq!(
        r.actions(),
        [
            start(1, "10.0.0.1:1", Order::Idle),
            start(2, "10.0.0.2:1", Order::Idle),
            start(3, "10.0.0.3:1", Order::Idle),
            order(1, Order::Run),
        ]
    );
    r.report("a", 1, Connecting, None);
    // a hangs: after 250 ms, b is tried too.
    assert_eq!(r.core.next_tick(), Some(r.t0 + Duration::from_millis(250)));
    r.advance(Duration::from_millis(249));
    assert_eq!(r.actions(), []);
    r.advance(Duration::from_millis(1));
    assert_eq!(r.actions(), [order(2, Order::Run)]);
    r.report("b", 2, Connecting, None);
    // b fails: c at once, without waiting for the delay.
    r.report("b", 2, TransientFailure, Some("refused"));
    assert_eq!(r.actions(), [order(3, Order::Run)]);
    assert_eq!(r.state(), Connecting);
    r.report("c", 3, Connecting, None);
    r.report("c", 3, Ready, None);
    // c is chosen; the others stop trying.
    assert_eq!(r.actions(), [order(1, Order::Idle), order(2, Order::Idle)]);
    assert_eq!((r.state(), r.picks()), (Ready, Picks::From(vec![3])));
    assert_eq!(r.core.next_tick(), None);
    // a connecting later changes nothing: the choice is sticky.
    r.report("a", 1, Idle, None);
    r.report("a", 1, Connecting, None);
    r.report("a", 1, Ready, None);
    assert_eq!(r.picks(), Picks::From(vec![3]));
}

#[test]
fn pick_first_starts_over_from_the_first_when_its_choice_is_lost() {
    let mut r = rig(config(Policy::PickFirst));
    r.reset(&[("a", "10.0.0.1:1"), ("b", "10.0.0.2:1")]);
    r.report("a", 1, Connecting, None);
    r.report("a", 1, TransientFailure, Some("refused"));
    r.report("b", 2, Connecting, None);
    r.report("b", 2, Ready, None);
    r.actions();
    assert_eq!(r.picks(), Picks::From(vec![2]));
    r.report("b", 2, Idle, Some("GOAWAY"));
    assert_eq!(r.actions(), [order(1, Order::Run)]);
    assert_eq!(r.picks(), Picks::Queue);
    r.report("a", 1, Connecting, None);
    r.report("a", 1, Ready, None);
    assert_eq!(r.picks(), Picks::From(vec![1]));
    // b reconnects on its own (its task was READY when told nothing else); it is told to
    // stay idle only if it was running.
    assert_eq!(r.actions(), [order(2, Order::Idle)]);
}

#[test]
fn pick_first_with_every_instance_failing_is_transient_failure() {
    let mut r = rig(config(Policy::PickFirst));
    r.reset(&[("a", "10.0.0.1:1"), ("b", "10.0.0.2:1")]);
    r.report("a", 1, Connecting, None);
    r.report("a", 1, TransientFailure, Some("refused"));
    r.report("b", 2, Connecting, None);
    r.report("b", 2, TransientFailure, Some("refused"));
    assert_eq!(r.state(), TransientFailure);
    assert!(matches!(r.picks(), Picks::Fail(_)));
    // Both keep trying on their own backoff; the first READY is chosen.
    r.report("b", 2, Connecting, None);
    r.report("b", 2, Ready, None);
    assert_eq!((r.state(), r.picks()), (Ready, Picks::From(vec![2])));
}

#[test]
fn pick_first_kept_warm_connects_all_and_prefers_the_first_in_order() {
    let mut r = rig(Config {
        pick_first: PickFirstOptions {
            keep_warm: true,
            ..PickFirstOptions::default()
        },
        ..config(Policy::PickFirst)
    });
    r.reset(&[("a", "10.0.0.1:1"), ("b", "10.0.0.2:1")]);
    assert_eq!(
        r.actions(),
        [
            start(1, "10.0.0.1:1", Order::Run),
            start(2, "10.0.0.2:1", Order::Run)
        ]
    );
    r.report("b", 2, Ready, None);
    assert_eq!(
        r.picks(),
        Picks::Queue,
        "a, first in order, is still trying"
    );
    r.report("a", 1, Ready, None);
    assert_eq!(r.picks(), Picks::From(vec![1]));
    r.report("a", 1, TransientFailure, Some("reset"));
    assert_eq!(
        r.picks(),
        Picks::From(vec![2]),
        "failover to a warm connection"
    );
    r.report("a", 1, Connecting, None);
    r.report("a", 1, Ready, None);
    assert_eq!(r.picks(), Picks::From(vec![2]), "sticky");
    assert_eq!(r.actions(), []);
}

#[test]
fn subsetting_connects_to_a_stable_subset() {
    let mut r = rig(Config {
        subset_size: Some(3),
        ..config(Policy::RoundRobin)
    });
    let keys: Vec<String> = (0..10).map(|i| format!("svc/{i}")).collect();
    let list: Vec<(String, String)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), format!("10.0.0.{i}:1")))
        .collect();
    r.update(Update::Reset(
        list.iter().map(|(k, a)| inst(k, a)).collect(),
    ));
    let started = r.actions();
    assert_eq!(started.len(), 3, "{started:?}");
    let members: Vec<String> = r
        .core
        .subchannels(|_| 0)
        .into_iter()
        .map(|s| s.key)
        .collect();
    // A non-member leaves: nothing changes.
    let outsider = keys
        .iter()
        .find(|k| !members.contains(k))
        .cloned()
        .unwrap_or_default();
    r.update(Update::Remove(outsider));
    assert_eq!(r.actions(), []);
    // A member leaves: it drains and exactly one other instance takes its place.
    let leaving = members[0].clone();
    r.update(Update::Remove(leaving.clone()));
    let actions = r.actions();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(matches!(
        actions[0],
        Action::Order {
            order: Order::Drain { .. },
            ..
        }
    ));
    assert!(matches!(actions[1], Action::Start { .. }));
    let now: Vec<String> = r
        .core
        .subchannels(|_| 0)
        .into_iter()
        .filter(|s| s.key != leaving)
        .map(|s| s.key)
        .collect();
    assert_eq!(now.len(), 3);
    assert!(
        members[1..].iter().all(|m| now.contains(m)),
        "the others stay"
    );
}

#[test]
fn locality_prefers_the_zone_and_spills_over_when_too_few_are_up() {
    let mut r = rig(Config {
        locality: Some(Locality::zone("a")),
        ..config(Policy::RoundRobin)
    });
    let zoned = |key: &str, addr: &str, zone: &str| {
        inst(key, addr).with_metadata([("zone".to_owned(), zone.to_owned())].into())
    };
    r.update(Update::Reset(vec![
        zoned("a1", "10.0.0.1:1", "a"),
        zoned("a2", "10.0.0.2:1", "a"),
        zoned("b1", "10.0.1.1:1", "b"),
        inst("x", "10.0.2.1:1"),
    ]));
    for (key, id) in [("a1", 1), ("a2", 2), ("b1", 3), ("x", 4)] {
        r.report(key, id, Ready, None);
    }
    assert_eq!(
        r.picks(),
        Picks::From(vec![1, 2]),
        "the zone's instances only"
    );
    assert!(r.core.subchannels(|_| 0)[2..].iter().all(|s| !s.in_picker));
    // Half of the zone is down (below 70 %): every instance takes RPCs.
    r.report("a2", 2, TransientFailure, Some("refused"));
    assert_eq!(r.picks(), Picks::From(vec![1, 3, 4]));
    r.report("a2", 2, Connecting, None);
    r.report("a2", 2, Ready, None);
    assert_eq!(r.picks(), Picks::From(vec![1, 2]));
}

#[test]
fn outlier_detection_ejects_on_its_ticks_and_brings_back_after_the_ejection_time() {
    let outlier = OutlierDetection {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        success_rate: None,
        failure_percentage: Some(FailurePercentageEjection {
            minimum_hosts: 2,
            request_volume: 10,
            ..Default::default()
        }),
        max_ejection_percent: 50,
        ..Default::default()
    };
    let mut r = rig(Config {
        outlier: Some(outlier),
        ..config(Policy::RoundRobin)
    });
    r.reset(&[("a", "10.0.0.1:1"), ("b", "10.0.0.2:1")]);
    r.report("a", 1, Ready, None);
    r.report("b", 2, Ready, None);
    r.actions();
    assert_eq!(r.core.next_tick(), Some(r.t0 + Duration::from_secs(10)));
    *r.io.calls[&1].lock().expect("calls") = Calls {
        succeeded: 1,
        failed: 99,
        ..Calls::default()
    };
    *r.io.calls[&2].lock().expect("calls") = Calls {
        succeeded: 100,
        ..Calls::default()
    };
    r.advance(Duration::from_secs(9));
    assert_eq!(r.picks(), Picks::From(vec![1, 2]), "not yet due");
    r.advance(Duration::from_secs(1));
    assert_eq!(r.actions(), [Action::Ejected { id: 1 }]);
    assert_eq!(r.picks(), Picks::From(vec![2]));
    assert!(r.core.subchannels(|_| 0)[0].ejected);
    r.advance(Duration::from_secs(30));
    assert_eq!(r.picks(), Picks::From(vec![1, 2]), "back after 30 s");
}

#[test]
fn pick_first_follows_the_resolver_s_order_not_the_keys() {
    let mut r = rig(config(Policy::PickFirst));
    // A static list keyed by address, listed backup last: the listed order counts, not the
    // keys' (sub-channels are numbered in key order: a:1 is 1, b:1 is 2).
    r.reset(&[("b:1", "10.0.0.2:1"), ("a:1", "10.0.0.1:1")]);
    let actions = r.actions();
    assert_eq!(actions.last(), Some(&order(2, Order::Run)), "{actions:?}");
    r.report("b:1", 2, Connecting, None);
    r.report("b:1", 2, TransientFailure, Some("refused"));
    assert_eq!(r.actions(), [order(1, Order::Run)]);
    // An instance added later comes last.
    r.update(Update::Add(inst("0:1", "10.0.0.0:1")));
    r.report("a:1", 1, Connecting, None);
    r.report("a:1", 1, TransientFailure, Some("refused"));
    assert_eq!(
        r.actions(),
        [start(3, "10.0.0.0:1", Order::Idle), order(3, Order::Run)]
    );
}
