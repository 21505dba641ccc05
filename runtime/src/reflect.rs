//! A reflector over one resource kind, scoped to a set of namespaces (`WATCH_NAMESPACES`),
//! each object stripped to what the caller reads before it is stored.

use futures::{StreamExt, future, stream::BoxStream};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store, reflector},
        watcher::{self, Event, watcher},
    },
};

/// Yields `Ok(())` after each change the reflector applied, and the error of each failed
/// watch call (retried after backoff), so the caller can tell a quiet watch from a broken
/// one.
pub type Events = BoxStream<'static, Result<(), watcher::Error>>;

/// A reflector for `K` in `namespaces` (or all), and the stream that drives it: poll it and
/// the store fills.
///
/// One cluster-wide watch, filtered: a store fed by one watch per namespace would be
/// emptied of the other namespaces each time one of them re-lists.
pub fn reflect<K>(client: &Client, namespaces: Option<Vec<String>>) -> (Store<K>, Events)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + for<'de> k8s_openapi::serde::Deserialize<'de>
        + Send
        + Sync
        + 'static,
{
    reflect_stripped(client, namespaces, None, |k| k)
}

/// [`reflect`] of the objects matching the label selector `labels` (all if `None`), each
/// passed through `strip` before it is stored. The selector is the apiserver's: objects
/// outside it are never sent, and one that stops matching is seen as deleted.
pub fn reflect_stripped<K>(
    client: &Client,
    namespaces: Option<Vec<String>>,
    labels: Option<&str>,
    strip: fn(K) -> K,
) -> (Store<K>, Events)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + for<'de> k8s_openapi::serde::Deserialize<'de>
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let in_scope = move |obj: &K| match &namespaces {
        None => true,
        Some(ns) => obj.namespace().is_some_and(|n| ns.contains(&n)),
    };
    let config = match labels {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    let events = watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .map(move |ev| {
            ev.map(|ev| match ev {
                Event::Apply(o) => Event::Apply(strip(o)),
                Event::InitApply(o) => Event::InitApply(strip(o)),
                other => other,
            })
        })
        .filter(move |ev| {
            future::ready(match ev {
                Ok(Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) => in_scope(o),
                _ => true,
            })
        });
    let stream = reflector(writer, events).map(|r| r.map(|_| ())).boxed();
    (reader, stream)
}
