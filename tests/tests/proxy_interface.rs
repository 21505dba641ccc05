//! Root suite: the agent's proxy address link, made over rtnetlink inside a network
//! namespace the test creates, and removed again.
use std::process::Command;

use elasti_agent::intercept::proxy_addr::{LinkKind, ProxyInterface};
use elasti_e2e::in_netns;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn ip_addr_show(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "addr", "show"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_proxy_link_carries_the_link_local_address_and_is_removed() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "this root suite cannot run in CI without root"
        );
        eprintln!(
            "\n!!! SKIPPED the_proxy_link_carries_the_link_local_address_and_is_removed: needs root !!!\n"
        );
        return;
    }
    let ns = format!("elasti-t-link-{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip")
            .success()
    );
    let path = format!("/run/netns/{ns}");
    // Netlink sockets belong to the netns of the thread that opens them.
    let (link, kind) = in_netns(&path, || {
        current_thread().block_on(async {
            let addr = "169.254.20.11".parse().expect("addr");
            let link = ProxyInterface::ensure("elasti0", addr)
                .await
                .expect("create");
            let kind = link.kind;
            let again = ProxyInterface::ensure("elasti0", addr)
                .await
                .expect("ensure is idempotent");
            assert_eq!(again.kind, LinkKind::Existing);
            (link, kind)
        })
    });
    assert!(matches!(kind, LinkKind::Dummy | LinkKind::Bridge));
    let shown = ip_addr_show(&ns);
    assert!(
        shown.contains("elasti0") && shown.contains("169.254.20.11/32"),
        "address on the link: {shown}"
    );

    in_netns(&path, || {
        current_thread().block_on(link.remove()).expect("remove")
    });
    assert!(!ip_addr_show(&ns).contains("elasti0"), "link removed");
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
}
