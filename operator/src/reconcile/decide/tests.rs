//! The decision, without a cluster: fixtures in the `controller-rs` style.
use std::time::Duration;

use elasti_api::{ElastiServiceSpec, ElastiServiceStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap_or_else(|e| panic!("{e}"))
}

fn port() -> ProxyPort {
    ProxyPort {
        name: "http".into(),
        port: 80,
        protocol: "TCP".into(),
        proxy_port: 24000,
    }
}

/// `web`, created at 0, cooldown 60 s, one trigger.
fn es() -> ElastiService {
    let mut es = ElastiService::new(
        "web",
        serde_json::from_value::<ElastiServiceSpec>(serde_json::json!({
            "service": "web",
            "cooldownPeriod": 60,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "triggers": [{"type": "activity"}]
        }))
        .unwrap_or_else(|e| panic!("{e}")),
    );
    es.metadata.namespace = Some("ns".into());
    es.metadata.uid = Some("u".into());
    es.metadata.generation = Some(1);
    es.metadata.creation_timestamp = Some(Time(at(0)));
    es
}

trait Fixture {
    fn with_condition(self, type_: &str, ok: bool, reason: &str, since: i64) -> Self;
    fn scaled_up_at(self, secs: i64) -> Self;
    fn woken_at(self, secs: i64) -> Self;
}

impl Fixture for ElastiService {
    fn with_condition(mut self, type_: &str, ok: bool, reason: &str, since: i64) -> Self {
        let status = self.status.get_or_insert_with(ElastiServiceStatus::default);
        status::set_condition(
            &mut status.conditions,
            status::condition(type_, ok, reason, "", Some(1), at(since)),
        );
        self
    }
    fn scaled_up_at(mut self, secs: i64) -> Self {
        self.status
            .get_or_insert_with(Default::default)
            .last_scaled_up_time = Some(Time(at(secs)));
        self
    }
    fn woken_at(mut self, secs: i64) -> Self {
        self.status
            .get_or_insert_with(Default::default)
            .last_wake_time = Some(Time(at(secs)));
        self
    }
}

/// Up (1 replica), Ready since 0, idle, one Ready agent on n1, at 1000 s.
fn seen() -> Observed {
    Observed {
        now: at(1000),
        service: ServiceSeen::Found,
        conflict: None,
        ports: Ok(vec![port()]),
        target: TargetSeen::Replicas(1),
        ready: true,
        selector: SelectorSeen::Selects,
        pods_listed: true,
        labels: LabelSeen {
            service: true,
            slices: true,
            unlabelled_slices: Vec::new(),
        },
        drained_for: None,
        drain_delay: Duration::from_secs(2),
        agents: vec![AgentEndpoint {
            node: "n1".into(),
            ip: [10, 0, 0, 1].into(),
            zone: None,
        }],
        fallback: Vec::new(),
        window: Window::Always,
        kept_up_by: Vec::new(),
        wakes: Vec::new(),
        not_intercepting: vec!["n1".into()],
        intercept_timeout: Duration::from_secs(5),
        poll: Duration::from_secs(30),
        triggers: Some(Idleness::Idle),
    }
}

/// Ready since long ago.
fn serving() -> ElastiService {
    es().with_condition(SERVING, true, "EndpointsReady", 0)
}

fn cond<'a>(plan: &'a Plan, type_: &str) -> Option<&'a Condition> {
    plan.conditions.iter().find(|c| c.type_ == type_)
}

fn state(plan: &Plan, type_: &str) -> (String, String) {
    cond(plan, type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// `o` with the fallback slices published for its agents, as observed.
fn with_fallback(mut o: Observed) -> Observed {
    o.fallback = fallback::desired(&es(), "web", &[port()], &o.agents);
    o
}

fn published(plan: &Plan) -> usize {
    match &plan.slices {
        Slices::Publish(s) => s.iter().map(|s| s.endpoints.len()).sum(),
        _ => 0,
    }
}

#[test]
fn an_idle_target_is_first_only_announced_to_the_agents() {
    let plan = decide(&serving(), &seen());
    assert!(
        plan.scale.is_none(),
        "/scale patched before anything intercepts"
    );
    assert_eq!(
        state(&plan, SCALE_DOWN_PENDING),
        ("True".into(), "Intercepting".into())
    );
    assert_eq!(published(&plan), 1, "the fallback slice is published first");
    assert!(plan.requeue <= Duration::from_secs(5));
    assert_eq!(plan.mode, Some(Mode::Serve));
}

/// The Service as the drain leaves it: no pod in its slices (so none Ready), for `secs`.
fn drained(mut o: Observed, secs: f64) -> Observed {
    o.selector = SelectorSeen::Drained;
    o.pods_listed = false;
    o.ready = false;
    o.drained_for = Some(Duration::from_secs_f64(secs));
    o.not_intercepting.clear();
    o
}

/// Issue 14 item 8: kube-proxy (NodePort) and ingress controllers route by endpoints, so
/// the pods leave the Service's endpoints, and kube-proxy is given its sync, before any pod
/// gets SIGTERM.
#[test]
fn once_every_ready_agent_intercepts_the_service_is_drained_and_then_goes_to_zero() {
    let es = serving().with_condition(SCALE_DOWN_PENDING, true, "Intercepting", 999);
    let mut o = seen();
    o.not_intercepting.clear();
    let plan = decide(&es, &o);
    assert!(plan.scale.is_none(), "/scale patched while pods are listed");
    assert_eq!(plan.drain, Drain::Drain);
    assert_eq!(
        state(&plan, SCALE_DOWN_PENDING),
        ("True".into(), DRAINING.into())
    );
    assert!(
        plan.requeue <= Duration::from_millis(2100),
        "{:?}",
        plan.requeue
    );
    assert_eq!(published(&plan), 1);

    // Drained half a second ago: the pods are out of the slices but the target still
    // counts as Ready (its cooldown does not start again), and kube-proxy is waited for.
    let es = serving().with_condition(SCALE_DOWN_PENDING, true, DRAINING, 999);
    let plan = decide(&es, &drained(seen(), 0.5));
    assert!(plan.scale.is_none());
    assert_eq!(plan.drain, Drain::Keep, "already drained");
    assert!(
        plan.requeue > Duration::from_millis(1400) && plan.requeue < Duration::from_millis(1600),
        "{:?}",
        plan.requeue
    );
    assert_eq!(state(&plan, SERVING).0, "True");
    assert_eq!(plan.mode, Some(Mode::Serve));

    // The EndpointSlice controller has not caught up: still waiting.
    let mut listed = drained(seen(), 5.0);
    listed.pods_listed = true;
    listed.drained_for = None;
    assert!(decide(&es, &listed).scale.is_none());

    // Drained for the whole delay: to zero.
    let plan = decide(&es, &drained(seen(), 2.0));
    assert!(matches!(plan.scale, Some(Scale::Down)), "{:?}", plan.scale);
    assert!(!plan.intercept_timed_out);
    assert_eq!(
        state(&plan, SCALE_DOWN_PENDING),
        ("True".into(), "ScalingDown".into())
    );
    assert_eq!(state(&plan, SCALED_TO_ZERO).0, "True");
    assert_eq!(plan.drain, Drain::Keep, "stays drained at zero");
    assert_eq!(published(&plan), 1);
}

#[test]
fn a_drain_begun_by_the_intercept_timeout_says_so_until_the_scale_down() {
    let late = serving().with_condition(SCALE_DOWN_PENDING, true, "Intercepting", 994);
    let plan = decide(&late, &seen());
    let draining = cond(&plan, SCALE_DOWN_PENDING).cloned();
    let message = draining
        .as_ref()
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("did not report"), "{message}");
    let mut es = serving();
    if let Some(c) = draining {
        status::set_condition(
            &mut es.status.get_or_insert_with(Default::default).conditions,
            c,
        );
    }
    // The agent has reported since: the timeout is still what the condition says.
    let plan = decide(&es, &drained(seen(), 2.0));
    assert!(matches!(plan.scale, Some(Scale::Down)));
    assert!(!plan.intercept_timed_out, "counted once, when it happened");
    let done = cond(&plan, SCALE_DOWN_PENDING).map(|c| c.message.clone());
    assert_eq!(done, Some(message));
}

/// A `/scale` to 0 that failed leaves the pods running: the agents must not read
/// `ScalingDown` (they would stop forwarding to them), and `Ready` says why.
#[test]
fn a_failed_scale_down_is_back_to_draining() {
    let es = serving().with_condition(SCALE_DOWN_PENDING, true, DRAINING, 990);
    let mut plan = decide(&es, &drained(seen(), 2.0));
    assert!(matches!(plan.scale, Some(Scale::Down)));
    let msg = "scaling down failed: denied";
    let reason = scale_failed(&es, &mut plan.conditions, &Scale::Down, msg, at(1000));
    assert_eq!(reason, "ScaleDownFailed");
    assert_eq!(
        state(&plan, SCALE_DOWN_PENDING),
        ("True".into(), DRAINING.into())
    );
    assert_eq!(
        cond(&plan, SCALE_DOWN_PENDING).map(|c| c.last_transition_time.0),
        Some(at(990)),
        "still pending since it began"
    );
    assert_eq!(
        state(&plan, SCALED_TO_ZERO),
        ("False".into(), "ScaleDownFailed".into())
    );
    assert_eq!(
        state(&plan, READY),
        ("False".into(), "ScaleDownFailed".into())
    );
    assert_eq!(cond(&plan, READY).map(|c| c.message.as_str()), Some(msg));
}

#[test]
fn a_service_without_a_selector_is_not_drained() {
    let es = serving().with_condition(SCALE_DOWN_PENDING, true, "Intercepting", 999);
    let mut o = seen();
    o.not_intercepting.clear();
    o.selector = SelectorSeen::Absent;
    let plan = decide(&es, &o);
    assert!(matches!(plan.scale, Some(Scale::Down)));
    assert_eq!(plan.drain, Drain::Keep);
}

#[test]
fn a_wake_during_the_drain_abandons_it_and_takes_the_drain_out() {
    let es = serving()
        .with_condition(SCALE_DOWN_PENDING, true, DRAINING, 998)
        .woken_at(999);
    let plan = decide(&es, &drained(seen(), 0.5));
    assert!(plan.scale.is_none());
    assert_eq!(plan.drain, Drain::Restore);
    assert_eq!(
        state(&plan, SCALE_DOWN_PENDING),
        ("False".into(), "Abandoned".into())
    );
    assert_eq!(
        published(&plan),
        1,
        "the fallback slice stays until the pods are listed again"
    );
}

#[test]
fn the_drain_comes_out_at_the_scale_up_and_stays_at_zero_until_then() {
    let mut o = drained(seen(), 60.0);
    o.target = TargetSeen::Replicas(0);
    o.drained_for = None;
    let asleep = es().with_condition(SCALED_TO_ZERO, true, "ScaledToZero", 900);
    assert_eq!(decide(&asleep, &o).drain, Drain::Keep);
    let plan = decide(&asleep.clone().woken_at(999), &o);
    assert!(
        matches!(plan.scale, Some(Scale::Up { .. })),
        "{:?}",
        plan.scale
    );
    assert_eq!(plan.drain, Drain::Restore);
    // Up again by hand, or a drain a crash left: the Service selects its pods again.
    let mut up = drained(seen(), 60.0);
    up.pods_listed = false;
    assert_eq!(decide(&serving(), &up).drain, Drain::Restore);
    // Nothing to write when it already does.
    assert_eq!(decide(&serving(), &seen()).drain, Drain::Keep);
}

#[test]
fn an_agent_that_never_reports_delays_the_scale_down_by_the_timeout_only() {
    let waiting = serving().with_condition(SCALE_DOWN_PENDING, true, "Intercepting", 998);
    let plan = decide(&waiting, &seen());
    assert!(plan.scale.is_none());
    assert!(
        plan.requeue > Duration::from_secs(2) && plan.requeue < Duration::from_secs(4),
        "{:?}",
        plan.requeue
    );
    let late = serving().with_condition(SCALE_DOWN_PENDING, true, "Intercepting", 994);
    let plan = decide(&late, &seen());
    assert_eq!(plan.drain, Drain::Drain, "drained anyway");
    assert!(plan.intercept_timed_out, "counted");
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == "InterceptTimeout" && e.note.contains("n1"))
    );
}

#[test]
fn a_wake_during_the_scale_down_abandons_it() {
    let es = serving()
        .with_condition(SCALE_DOWN_PENDING, true, "Intercepting", 998)
        .woken_at(999);
    let plan = decide(&es, &with_fallback(seen()));
    assert!(plan.scale.is_none());
    assert_eq!(
        state(&plan, SCALE_DOWN_PENDING),
        ("False".into(), "Abandoned".into())
    );
    assert_eq!(
        plan.slices,
        Slices::Remove,
        "serving again: no fallback slice"
    );
    assert_eq!(state(&plan, SCALED_TO_ZERO).1, "AgentHolding");
}

#[test]
fn the_pending_condition_ends_at_zero_with_no_ready_endpoint() {
    let es = serving().with_condition(SCALE_DOWN_PENDING, true, "ScalingDown", 990);
    let mut o = seen();
    o.target = TargetSeen::Replicas(0);
    o.triggers = Some(Idleness::Idle);
    // Pods still terminating, one still Ready: the agents keep steering.
    let plan = decide(&es, &o);
    assert_eq!(state(&plan, SCALE_DOWN_PENDING).0, "True");
    assert_eq!(published(&plan), 1);
    o.ready = false;
    let plan = decide(&es, &o);
    assert_eq!(
        state(&plan, SCALE_DOWN_PENDING),
        ("False".into(), "ScaledToZero".into())
    );
    assert_eq!(plan.mode, Some(Mode::Proxy));
    assert_eq!(published(&plan), 1);
}

#[test]
fn a_wake_at_zero_scales_up_with_the_group() {
    let es = es().woken_at(998);
    let mut o = seen();
    o.target = TargetSeen::Replicas(0);
    o.ready = false;
    let db = Arc::new(ElastiService::new("db", es.spec.clone()));
    o.wakes = vec![db];
    let plan = decide(&es, &o);
    let Some(Scale::Up { cause, members, .. }) = &plan.scale else {
        panic!("{:?}", plan.scale)
    };
    assert_eq!(*cause, UpCause::Wake);
    assert_eq!(members.len(), 1);
}

#[test]
fn a_slow_start_stays_up_and_its_wake_duration_is_an_event() {
    // Scaled up at 992 after being down since 900; Ready only now (1000).
    let es = es()
        .with_condition(SERVING, false, "NoReadyEndpoint", 900)
        .scaled_up_at(992);
    let mut o = seen();
    o.ready = false;
    let plan = decide(&es, &o);
    assert!(plan.scale.is_none());
    assert_eq!(state(&plan, SCALED_TO_ZERO).1, "NotReady");
    o.ready = true;
    let plan = decide(&es, &o);
    assert_eq!(plan.woken_in, Some(Duration::from_secs(8)));
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == "WokenUp" && e.note.contains("8.0s")),
        "{:?}",
        plan.events
    );
    assert_eq!(
        state(&plan, SERVING),
        ("True".into(), "EndpointsReady".into())
    );
    assert!(plan.scale.is_none(), "the cooldown starts now");
    assert!(plan.requeue <= Duration::from_secs(60) + RECHECK_MARGIN);
}

#[test]
fn a_second_elastiservice_is_left_alone() {
    let mut o = seen();
    o.conflict = Some("ElastiService first already manages Service web".into());
    let plan = decide(&serving(), &o);
    assert_eq!(state(&plan, CONFLICT), ("True".into(), "Conflict".into()));
    assert_eq!(state(&plan, READY).0, "False");
    assert_eq!(plan.slices, Slices::Keep, "the slices are the other one's");
    assert!(plan.scale.is_none() && plan.proxy_ports.is_empty());
    assert_eq!(plan.events.len(), 1);
}

#[test]
fn conflicts_go_to_the_later_elastiservice() {
    let first = Arc::new(es());
    let mut second = es();
    second.metadata.name = Some("web2".into());
    second.metadata.creation_timestamp = Some(Time(at(5)));
    second.spec.scale_target_ref.name = "other".into();
    let all = vec![first.clone(), Arc::new(second.clone())];
    assert!(conflict(&first, &all).is_none());
    assert!(conflict(&second, &all).is_some_and(|m| m.contains("Service web")));
    // The same target under another Service.
    second.spec.service = "web2".into();
    second.spec.scale_target_ref.name = "web".into();
    let all = vec![first.clone(), Arc::new(second.clone())];
    assert!(conflict(&second, &all).is_some_and(|m| m.contains("Deployment web")));
    second.spec.scale_target_ref.name = "other".into();
    let all = vec![first, Arc::new(second.clone())];
    assert!(conflict(&second, &all).is_none());
}

#[test]
fn the_one_already_managing_keeps_it_against_one_created_in_the_same_second() {
    // creationTimestamp keeps whole seconds: `api` may carry the same second as `web`,
    // which it came after, and sorts before it by name.
    let mut web = es();
    web.status = Some(ElastiServiceStatus {
        conditions: vec![crate::status::condition(
            CONFLICT,
            false,
            "NoConflict",
            "",
            Some(1),
            at(0),
        )],
        ..Default::default()
    });
    let mut api = es();
    api.metadata.name = Some("api".into());
    api.spec.service = "api".into();
    let (web, api) = (Arc::new(web), Arc::new(api));
    let all = vec![web.clone(), api.clone()];
    assert!(
        conflict(&api, &all)
            .is_some_and(|m| m.contains("ElastiService web") && m.contains("Deployment web")),
        "the later one is the conflict"
    );
    assert!(conflict(&web, &all).is_none(), "the one managing keeps it");
    // Neither managing yet (an operator's first look at both): creation time, then name.
    let fresh = |e: &ElastiService| {
        let mut e = e.clone();
        e.status = None;
        Arc::new(e)
    };
    let (web, api) = (fresh(&web), fresh(&api));
    let all = vec![web.clone(), api.clone()];
    assert!(conflict(&web, &all).is_some() && conflict(&api, &all).is_none());
}

#[test]
fn unsupported_services_and_missing_targets_say_so() {
    let mut o = with_fallback(seen());
    o.service = ServiceSeen::NotSupported("headless (clusterIP: None)".into());
    let plan = decide(&serving(), &o);
    assert_eq!(
        state(&plan, READY),
        ("False".into(), "ServiceNotSupported".into())
    );
    assert_eq!(plan.slices, Slices::Remove);
    let mut o = seen();
    o.target = TargetSeen::Unreadable("Deployment/web /scale: connection refused".into());
    let plan = decide(&serving(), &o);
    assert_eq!(state(&plan, READY).1, "TargetUnreadable");
    assert!(cond(&plan, READY).is_some_and(|c| c.message.contains("connection refused")));
    assert_eq!(plan.slices, Slices::Keep);
    assert_eq!(plan.requeue, UNREADABLE_RETRY);
}

#[test]
fn outside_the_window_nothing_is_announced_and_the_condition_says_why() {
    let mut o = seen();
    o.window = Window::Closed {
        opens: Some(at(2000)),
    };
    let plan = decide(&serving(), &o);
    assert!(plan.scale.is_none());
    assert_eq!(
        state(&plan, SCALE_TO_ZERO_ALLOWED),
        ("False".into(), "OutsideEnabledPeriod".into())
    );
    assert_eq!(
        state(&plan, SCALE_DOWN_PENDING),
        (String::new(), String::new())
    );
    assert!(plan.requeue <= Duration::from_secs(30));
    o.window = Window::Invalid("bad".into());
    let plan = decide(&serving(), &o);
    assert_eq!(state(&plan, SCALE_TO_ZERO_ALLOWED).1, "InvalidSchedule");
    assert!(plan.scale.is_none());
}

#[test]
fn times_read_back_from_status_count_from_the_end_of_their_second() {
    // metav1.Time keeps whole seconds: Ready "at 940" may have been 940.9, so at 1000 a
    // 60 s cooldown of readiness is not over yet.
    let es = es().with_condition(SERVING, true, "EndpointsReady", 940);
    let plan = decide(&es, &seen());
    assert!(plan.scale.is_none());
    assert_ne!(
        state(&plan, SCALE_DOWN_PENDING).0,
        "True",
        "announced before a whole cooldown of readiness"
    );
    let later = Observed {
        now: at(1001),
        ..seen()
    };
    assert_eq!(state(&decide(&es, &later), SCALE_DOWN_PENDING).0, "True");
    // The same for the last wake.
    let woken = serving().woken_at(940);
    assert_ne!(
        state(&decide(&woken, &seen()), SCALE_DOWN_PENDING).0,
        "True"
    );
}

/// At zero every ElastiService is reconciled every poll: slices that already are what is
/// wanted are not applied again, and none to remove is no call at all.
#[test]
fn fallback_slices_already_there_are_not_written_again() {
    let es = serving().with_condition(SCALE_DOWN_PENDING, true, "Intercepting", 999);
    let mut o = seen();
    o.ready = false;
    o.target = TargetSeen::Replicas(0);
    let Slices::Publish(want) = decide(&es, &o).slices else {
        panic!("nothing published at zero")
    };
    o.fallback = want;
    assert_eq!(decide(&es, &o).slices, Slices::Keep);
    // An agent more: published again, with both.
    o.agents.push(AgentEndpoint {
        node: "n2".into(),
        ip: [10, 0, 0, 2].into(),
        zone: None,
    });
    assert_eq!(published(&decide(&es, &o)), 2);
    // Serving: the slice goes, and once gone nothing is asked.
    let mut serve = with_fallback(seen());
    serve.triggers = Some(Idleness::Busy {
        detail: "busy".into(),
    });
    assert_eq!(decide(&serving(), &serve).slices, Slices::Remove);
    serve.fallback.clear();
    assert_eq!(decide(&serving(), &serve).slices, Slices::Keep);
}

#[test]
fn proxy_ports_are_published_only_once_the_agents_can_see_the_service_and_its_slices() {
    // New: the Service not labelled yet. Label it; publish no port the agents would hold
    // without seeing its endpoints.
    let mut o = seen();
    o.labels = LabelSeen::default();
    let plan = decide(&es(), &o);
    assert!(plan.labels.service, "the Service is labelled");
    assert!(plan.proxy_ports.is_empty(), "{:?}", plan.proxy_ports);
    // Labelled; the EndpointSlice controller has not copied it onto the slices yet.
    o.labels.service = true;
    let plan = decide(&es(), &o);
    assert!(!plan.labels.service, "not labelled again");
    assert!(plan.proxy_ports.is_empty());
    // Both: published.
    o.labels.slices = true;
    assert_eq!(decide(&es(), &o).proxy_ports, vec![port()]);
    // Ports already published stay while the label is put back (an upgrade, or a label
    // someone removed): the agents would otherwise let go of a Service at zero.
    let mut published = es();
    published
        .status
        .get_or_insert_with(Default::default)
        .proxy_ports = vec![port()];
    o.labels = LabelSeen::default();
    let plan = decide(&published, &o);
    assert!(plan.labels.service);
    assert_eq!(plan.proxy_ports, vec![port()]);
}

#[test]
fn a_selectorless_services_slices_are_labelled_by_the_operator() {
    let mut o = seen();
    o.selector = SelectorSeen::Absent;
    o.labels = LabelSeen {
        service: true,
        slices: false,
        unlabelled_slices: vec!["web-manual".into()],
    };
    let plan = decide(&es(), &o);
    assert_eq!(plan.labels.slices, vec!["web-manual".to_string()]);
    assert!(!plan.labels.service);
}

#[test]
fn nothing_is_labelled_for_a_service_another_elastiservice_manages_or_one_that_is_missing() {
    let mut o = seen();
    o.labels = LabelSeen::default();
    o.conflict = Some("ElastiService api already manages Service web".into());
    assert_eq!(decide(&es(), &o).labels, Labels::default());
    o.conflict = None;
    o.service = ServiceSeen::Missing;
    assert_eq!(decide(&es(), &o).labels, Labels::default());
    // A target that is missing still needs its Service seen: the agents answer its
    // clients at once instead of holding them.
    o.service = ServiceSeen::Found;
    o.target = TargetSeen::Missing("deployments.apps web not found".into());
    assert!(decide(&es(), &o).labels.service);
}
