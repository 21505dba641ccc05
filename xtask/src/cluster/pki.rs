//! The cluster's certificates: one CA that signs every serving and client certificate, and
//! the service-account signing key. Written once per `cluster up`.
use std::{fs, net::IpAddr, path::Path};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::net;

/// A client identity: file stem, CN (the user), and O (the groups).
pub struct Client {
    pub name: &'static str,
    pub user: String,
    pub groups: &'static [&'static str],
}

/// Every client certificate the components use.
pub fn clients() -> Vec<Client> {
    vec![
        Client {
            name: "admin",
            user: "elasti-admin".into(),
            groups: &["system:masters"],
        },
        Client {
            name: "controller-manager",
            user: "system:kube-controller-manager".into(),
            groups: &[],
        },
        Client {
            name: "scheduler",
            user: "system:kube-scheduler".into(),
            groups: &[],
        },
        Client {
            name: "kube-proxy",
            user: "system:kube-proxy".into(),
            groups: &[],
        },
        Client {
            name: "kubelet",
            user: format!("system:node:{}", net::NODE_NAME),
            groups: &["system:nodes"],
        },
        Client {
            name: "apiserver-kubelet-client",
            user: "kube-apiserver-kubelet-client".into(),
            groups: &[],
        },
    ]
}

/// Writes `ca.{crt,key}`, `apiserver.{crt,key}`, `kubelet-serving.{crt,key}`, one pair per
/// [`clients`] entry, and `sa.key` into `dir`.
pub fn write_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = dn("elasti-e2e-ca", &[]);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    write_pair(dir, "ca", &ca_cert.pem(), &ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut apiserver_names: Vec<SanType> = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
    ]
    .iter()
    .filter_map(|n| (*n).try_into().ok().map(SanType::DnsName))
    .collect();
    for ip in [net::APISERVER_SERVICE_IP, net::NODE_IP, "127.0.0.1"] {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            apiserver_names.push(SanType::IpAddress(ip));
        }
    }
    leaf(
        dir,
        &issuer,
        "apiserver",
        dn("kube-apiserver", &[]),
        apiserver_names.clone(),
        true,
    )?;
    let mut kubelet_names = vec![SanType::IpAddress(net::NODE_IP.parse()?)];
    if let Ok(n) = net::NODE_NAME.try_into() {
        kubelet_names.push(SanType::DnsName(n));
    }
    leaf(
        dir,
        &issuer,
        "kubelet-serving",
        dn(net::NODE_NAME, &[]),
        kubelet_names,
        true,
    )?;
    for c in clients() {
        leaf(
            dir,
            &issuer,
            c.name,
            dn(&c.user, c.groups),
            Vec::new(),
            false,
        )?;
    }
    let sa = KeyPair::generate()?;
    fs::write(dir.join("sa.key"), sa.serialize_pem())?;
    fs::write(dir.join("sa.pub"), sa.public_key_pem())?;
    Ok(())
}

fn dn(cn: &str, groups: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for g in groups {
        dn.push(DnType::OrganizationName, *g);
    }
    dn
}

fn leaf(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    subject: DistinguishedName,
    sans: Vec<SanType>,
    server: bool,
) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = subject;
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let cert = params.signed_by(&key, issuer)?;
    write_pair(dir, name, &cert.pem(), &key)
}

fn write_pair(dir: &Path, name: &str, cert: &str, key: &KeyPair) -> Result<()> {
    fs::write(dir.join(format!("{name}.crt")), cert)?;
    fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    Ok(())
}
