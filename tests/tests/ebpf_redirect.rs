//! Root suite: the real eBPF programs, attached at a child cgroup v2 that only this test's
//! probe processes join, steering real sockets inside a network namespace the test creates.
//! The "ClusterIP" 10.96.0.50 exists nowhere: the namespace has only loopback, so a connect
//! that is not steered fails with "network unreachable" and no packet leaves.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use elasti_agent::intercept::{Interceptor, keys::Entry};

const CLUSTER_IP: &str = "10.96.0.50:80";

/// Whether this run may touch cgroups and load programs. Outside CI a non-root run says
/// loudly that it skipped; in CI (which runs as root) skipping is a failure.
fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let embedded = elasti_agent::intercept::programs::embedded_object().is_some();
    if root && embedded {
        return true;
    }
    let why = if root {
        "the agent was built without `cargo xtask build-ebpf`"
    } else {
        "it needs root"
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: cannot run in CI because {why}"
    );
    eprintln!("\n!!! SKIPPED {test}: {why}. Run `cargo xtask test` as root. !!!\n");
    false
}

/// A cgroup v2 child and a network namespace, both removed on drop.
struct TestBed {
    name: String,
    cgroup: PathBuf,
    accepted: Arc<AtomicUsize>,
    listener: SocketAddr,
}

impl TestBed {
    fn new(tag: &str) -> Self {
        let name = format!("elasti-t-{tag}-{}", std::process::id());
        let root = elasti_agent::intercept::programs::cgroup2_mount().expect("cgroup v2 mounted");
        let cgroup = root.join(&name);
        fs::create_dir_all(&cgroup).expect("create test cgroup");
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        // The agent's listener, inside the namespace: it answers `pong from agent`.
        let listener = elasti_e2e::in_netns(&format!("/run/netns/{name}"), || {
            TcpListener::bind("127.0.0.1:0").expect("bind in netns")
        });
        let addr = listener.local_addr().expect("listener addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut line = String::new();
                let mut reader = BufReader::new(&stream);
                if reader.read_line(&mut line).is_ok() {
                    let _ = (&stream).write_all(b"pong from agent\n");
                }
            }
        });
        Self {
            name,
            cgroup,
            accepted,
            listener: addr,
        }
    }

    /// Runs the probe against `target` inside the namespace; `in_cgroup` decides whether it
    /// first joins the attached cgroup.
    fn probe(&self, target: &str, in_cgroup: bool) -> String {
        let out = self
            .probe_command(target, in_cgroup, None)
            .output()
            .expect("run connect-probe");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The probe's command; with `hold`, it keeps its connection open that long after
    /// the reply.
    fn probe_command(
        &self,
        target: &str,
        in_cgroup: bool,
        hold: Option<std::time::Duration>,
    ) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_connect-probe"))
            .arg(target);
        if let Some(hold) = hold {
            cmd.arg(hold.as_millis().to_string());
        }
        if in_cgroup {
            let procs = self.cgroup.join("cgroup.procs");
            // SAFETY: only open/write/close between fork and exec.
            unsafe {
                cmd.pre_exec(move || fs::write(&procs, b"0"));
            }
        }
        cmd
    }

    fn attach(&self) -> Interceptor {
        Interceptor::attach(&self.cgroup).expect("attach programs at the test cgroup")
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = fs::remove_dir(&self.cgroup);
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("spawn");
    assert!(status.success(), "{cmd:?} failed: {status}");
}

#[test]
fn connect4_to_a_held_service_lands_on_the_agent_and_getpeername_shows_the_cluster_ip() {
    if !root_or_skip("connect4_held") {
        return;
    }
    let bed = TestBed::new("c4");
    let mut interceptor = bed.attach();
    interceptor
        .hold(
            CLUSTER_IP.parse().expect("addr"),
            Entry::steer(bed.listener),
            7,
        )
        .expect("hold");

    let out = bed.probe(CLUSTER_IP, true);
    assert!(
        out.contains("reply=pong from agent"),
        "steered connect must reach the agent: {out}"
    );
    assert!(
        out.contains(&format!("peer={CLUSTER_IP}")),
        "getpeername must show the ClusterIP: {out}"
    );
    assert_eq!(bed.accepted.load(Ordering::SeqCst), 1);
    let counts = interceptor.rewrites(7).expect("counters");
    assert_eq!(counts.connects, 1, "one rewrite counted");
    assert!(counts.peernames >= 1, "getpeername rewrite counted");
}

#[test]
fn a_process_outside_the_cgroup_is_not_redirected() {
    if !root_or_skip("outside_cgroup") {
        return;
    }
    let bed = TestBed::new("out");
    let mut interceptor = bed.attach();
    interceptor
        .hold(
            CLUSTER_IP.parse().expect("addr"),
            Entry::steer(bed.listener),
            1,
        )
        .expect("hold");

    let out = bed.probe(CLUSTER_IP, false);
    assert!(
        out.contains("error=NetworkUnreachable"),
        "outside the cgroup the connect goes where aimed: {out}"
    );
    assert_eq!(
        bed.accepted.load(Ordering::SeqCst),
        0,
        "the agent must not see it"
    );
    assert_eq!(interceptor.rewrites(1).expect("counters").connects, 0);
}

#[test]
fn connect6_with_an_ipv4_mapped_address_is_steered() {
    if !root_or_skip("connect6_mapped") {
        return;
    }
    let bed = TestBed::new("c6");
    let mut interceptor = bed.attach();
    interceptor
        .hold(
            CLUSTER_IP.parse().expect("addr"),
            Entry::steer(bed.listener),
            2,
        )
        .expect("hold");

    let out = bed.probe("[::ffff:10.96.0.50]:80", true);
    assert!(
        out.contains("reply=pong from agent"),
        "v6 socket to a v4-mapped ClusterIP must be steered: {out}"
    );
    assert!(
        out.contains("peer=[::ffff:10.96.0.50]:80"),
        "getpeername6 must show the ClusterIP: {out}"
    );
    assert_eq!(interceptor.rewrites(2).expect("counters").connects, 1);
}

#[test]
fn services_that_are_not_held_and_released_services_are_left_alone() {
    if !root_or_skip("not_held") {
        return;
    }
    let bed = TestBed::new("nh");
    let mut interceptor = bed.attach();
    interceptor
        .hold(
            CLUSTER_IP.parse().expect("addr"),
            Entry::steer(bed.listener),
            3,
        )
        .expect("hold");

    let other_port = bed.probe("10.96.0.50:81", true);
    assert!(
        other_port.contains("error=NetworkUnreachable"),
        "another port is not held: {other_port}"
    );
    interceptor
        .release(CLUSTER_IP.parse().expect("addr"))
        .expect("release");
    let released = bed.probe(CLUSTER_IP, true);
    assert!(
        released.contains("error=NetworkUnreachable"),
        "a released service takes the normal path: {released}"
    );
    assert_eq!(bed.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn with_the_agent_gone_connects_behave_as_before() {
    if !root_or_skip("fail_open") {
        return;
    }
    let bed = TestBed::new("fo");
    {
        let mut interceptor = bed.attach();
        interceptor
            .hold(
                CLUSTER_IP.parse().expect("addr"),
                Entry::steer(bed.listener),
                4,
            )
            .expect("hold");
        assert!(
            bed.probe(CLUSTER_IP, true).contains("reply=pong"),
            "steered while attached"
        );
    }
    // The Interceptor is dropped: programs detached, maps gone.
    let out = bed.probe(CLUSTER_IP, true);
    assert!(
        out.contains("error=NetworkUnreachable"),
        "after the agent is gone, connects go where aimed: {out}"
    );
    let direct = bed.probe(&bed.listener.to_string(), true);
    assert!(
        direct.contains("peer=127.0.0.1") && direct.contains("reply=pong"),
        "ordinary connects still work: {direct}"
    );
}

#[test]
fn a_map_insert_that_fails_halfway_leaves_nothing_in() {
    if !root_or_skip("a_map_insert_that_fails_halfway_leaves_nothing_in") {
        return;
    }
    let bed = TestBed::new("rollback");
    let mut i = Interceptor::attach(&bed.cgroup).expect("attach");
    let proxy: SocketAddr = "169.254.20.11:24000".parse().expect("addr");
    // Fill the map to one short of its size: the second entry of the next port fails.
    let capacity = elasti_common::MAX_SERVICES as usize;
    for n in 0..capacity - 1 {
        let addr = SocketAddr::new(
            std::net::Ipv4Addr::from(0x0a60_0000u32 + n as u32 + 1).into(),
            80,
        );
        i.hold(addr, Entry::steer(proxy), 0).expect("fill");
    }
    let a: SocketAddr = "10.200.0.1:80".parse().expect("addr");
    let b: SocketAddr = "10.200.0.2:80".parse().expect("addr");
    assert!(
        i.hold_all(&[a, b], Entry::steer(proxy), 1).is_err(),
        "the map is full"
    );
    assert!(
        !i.held_addrs().contains(&a),
        "the entry that went in before the failure is taken out again"
    );
}

#[test]
fn a_stalled_agent_empties_its_maps_before_it_reports_unhealthy() {
    if !root_or_skip("a_stalled_agent_empties_its_maps_before_it_reports_unhealthy") {
        return;
    }
    use elasti_agent::health::{self, Health};
    use elasti_runtime::admin::Health as _;
    let bed = TestBed::new("watchdog");
    let mut i = Interceptor::attach(&bed.cgroup).expect("attach");
    let held: SocketAddr = CLUSTER_IP.parse().expect("addr");
    i.hold(
        held,
        Entry::steer("169.254.20.11:24000".parse().expect("addr")),
        0,
    )
    .expect("hold");
    let mut watchdog_maps = i
        .map_fds()
        .and_then(Interceptor::from_map_fds)
        .expect("a second handle on the maps");
    let h = Health::new();
    assert_eq!(
        health::watchdog_tick(&h, &mut watchdog_maps, health::clock_ms()),
        None,
        "a loop that just beat is fine"
    );
    assert_eq!(i.held_addrs(), vec![held]);
    let later = health::clock_ms() + health::LOOP_STALL.as_millis() as u64 + 1_000;
    let why = health::watchdog_tick(&h, &mut watchdog_maps, later).expect("stalled");
    assert!(why.contains("main loop"), "{why}");
    assert!(
        i.held_addrs().is_empty(),
        "fail-open: nothing is steered any more"
    );
    assert!(h.live().is_err(), "and only then unhealthy");
}

/// Polls `f` for up to 3 s until it returns true.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn a_count_only_entry_counts_connects_and_open_sockets_without_steering() {
    if !root_or_skip("a_count_only_entry_counts_connects_and_open_sockets_without_steering") {
        return;
    }
    let bed = TestBed::new("count");
    let mut i = bed.attach();
    // The "Service" is the listener itself: a count-only entry must leave the connect
    // where it was aimed (it answers), and only count it.
    let service = bed.listener;
    i.hold(service, Entry::CountOnly, 5)
        .expect("count-only entry");
    let open = |i: &Interceptor| {
        i.activity(service)
            .map(|a| a.tracked.saturating_sub(a.released))
            .unwrap_or(99)
    };
    assert_eq!(open(&i), 0);
    let long = bed
        .probe_command(
            &service.to_string(),
            true,
            Some(std::time::Duration::from_millis(1_500)),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn a probe that stays connected");
    assert!(
        eventually(|| open(&i) == 1),
        "an open connection counts as open: {:?}",
        i.activity(service)
    );
    let connects = i.activity(service).map(|a| a.connects);
    assert_eq!(connects, Some(1));
    let out = long.wait_with_output().expect("probe ends");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("peer=127.0.0.1") && out.contains("reply=pong from agent"),
        "not steered: it reached the address it dialled: {out}"
    );
    assert!(
        eventually(|| open(&i) == 0),
        "closed: no longer open: {:?}",
        i.activity(service)
    );
    assert_eq!(
        i.rewrites(5).expect("counters").connects,
        0,
        "count-only never rewrites"
    );
    // A process outside the cgroup is not counted.
    let outside = bed.probe(&service.to_string(), false);
    assert!(outside.contains("reply=pong"), "{outside}");
    assert_eq!(i.activity(service).map(|a| a.connects), Some(1));
    // Released, the counts go; counted again, they start from zero in a new generation.
    i.release(service).expect("release");
    assert_eq!(i.activity(service), None);
}

#[test]
fn a_counted_steered_entry_counts_and_steers() {
    if !root_or_skip("a_counted_steered_entry_counts_and_steers") {
        return;
    }
    let bed = TestBed::new("countsteer");
    let mut i = bed.attach();
    let held: SocketAddr = CLUSTER_IP.parse().expect("addr");
    i.hold(
        held,
        Entry::Steer {
            proxy: bed.listener,
            count: true,
        },
        6,
    )
    .expect("hold");
    let out = bed.probe(CLUSTER_IP, true);
    assert!(out.contains("reply=pong from agent"), "{out}");
    let a = i.activity(held).expect("counted");
    assert_eq!(a.connects, 1);
    assert!(
        eventually(|| i
            .activity(held)
            .is_some_and(|a| a.tracked == 1 && a.released == 1)),
        "the probe's socket was tracked and released: {:?}",
        i.activity(held)
    );
    assert_eq!(i.rewrites(6).expect("counters").connects, 1);
}
