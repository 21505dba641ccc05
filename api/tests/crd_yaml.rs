//! The checked-in CRD YAML is generated from the Rust types; this test fails when it is
//! stale. Regenerate with `ELASTI_UPDATE_CRD=1 cargo test -p elasti-api --test crd_yaml`.
use kube::CustomResourceExt;

const CHECKED_IN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/crd/elastiservices.yaml"
);

#[test]
fn checked_in_crd_matches_the_types() {
    let generated = format!(
        "# Generated from api/src/elastiservice.rs; do not edit.\n# Regenerate: ELASTI_UPDATE_CRD=1 cargo test -p elasti-api --test crd_yaml\n{}",
        serde_yaml::to_string(&elasti_api::ElastiService::crd()).unwrap_or_else(|e| panic!("{e}"))
    );
    if std::env::var_os("ELASTI_UPDATE_CRD").is_some() {
        std::fs::write(CHECKED_IN, &generated).unwrap_or_else(|e| panic!("{e}"));
    }
    let on_disk = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        on_disk == generated,
        "deploy/crd/elastiservices.yaml is stale; run: ELASTI_UPDATE_CRD=1 cargo test -p elasti-api --test crd_yaml"
    );
}
