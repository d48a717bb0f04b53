//! The cluster as the sources last saw it: raw objects, indexed for the plan.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{core::v1 as core, discovery::v1::EndpointSlice};

use super::{
    endpoints::slice_service,
    error::{ObjectError, ObjectKind},
    service::{ServiceName, object_name},
};

/// Services, EndpointSlices and this node's Node object. Every mutation says which Services
/// it affects, which is how the sync loop knows what a partial sync must rewrite.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    services: BTreeMap<ServiceName, core::Service>,
    /// namespace -> slice name -> slice.
    slices: BTreeMap<String, BTreeMap<String, EndpointSlice>>,
    slices_by_service: BTreeMap<ServiceName, BTreeSet<String>>,
    node: Option<core::Node>,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a Service; returns its name.
    pub fn upsert_service(&mut self, svc: core::Service) -> Result<ServiceName, Box<ObjectError>> {
        let (namespace, name) = object_name(ObjectKind::Service, &svc.metadata, true)?;
        let key = ServiceName { namespace, name };
        self.services.insert(key.clone(), svc);
        Ok(key)
    }

    /// Removes a Service; returns whether it was there.
    pub fn remove_service(&mut self, name: &ServiceName) -> bool {
        self.services.remove(name).is_some()
    }

    /// Inserts or replaces an EndpointSlice; returns the Services it affects (the one it now
    /// belongs to and, if its label changed, the one it left).
    pub fn upsert_slice(
        &mut self,
        slice: EndpointSlice,
    ) -> Result<Vec<ServiceName>, Box<ObjectError>> {
        let (namespace, name) = object_name(ObjectKind::EndpointSlice, &slice.metadata, true)?;
        let mut affected = self.remove_slice(&namespace, &name);
        if let Some(service) = slice_service(&slice) {
            let owner = ServiceName::new(namespace.clone(), service);
            self.slices_by_service
                .entry(owner.clone())
                .or_default()
                .insert(name.clone());
            if !affected.contains(&owner) {
                affected.push(owner);
            }
        }
        self.slices
            .entry(namespace)
            .or_default()
            .insert(name, slice);
        Ok(affected)
    }

    /// Removes an EndpointSlice; returns the Services it affected.
    pub fn remove_slice(&mut self, namespace: &str, name: &str) -> Vec<ServiceName> {
        let Some(in_namespace) = self.slices.get_mut(namespace) else {
            return Vec::new();
        };
        let Some(old) = in_namespace.remove(name) else {
            return Vec::new();
        };
        if in_namespace.is_empty() {
            self.slices.remove(namespace);
        }
        let Some(service) = slice_service(&old) else {
            return Vec::new();
        };
        let owner = ServiceName::new(namespace, service);
        if let Some(set) = self.slices_by_service.get_mut(&owner) {
            set.remove(name);
            if set.is_empty() {
                self.slices_by_service.remove(&owner);
            }
        }
        vec![owner]
    }

    /// Replaces this node's Node object; returns whether it changed.
    pub fn set_node(&mut self, node: Option<core::Node>) -> bool {
        let changed = self.node != node;
        self.node = node;
        changed
    }

    /// Replaces every Service (a list or re-list); returns the Services that were added,
    /// changed or removed, and the objects that could not be identified.
    pub fn replace_services(
        &mut self,
        services: Vec<core::Service>,
    ) -> (BTreeSet<ServiceName>, Vec<ObjectError>) {
        let mut old = std::mem::take(&mut self.services);
        let mut changed = BTreeSet::new();
        let mut problems = Vec::new();
        for svc in services {
            match self.upsert_service(svc) {
                Ok(name) => {
                    if old.remove(&name).as_ref() != self.services.get(&name) {
                        changed.insert(name);
                    }
                }
                Err(e) => problems.push(*e),
            }
        }
        changed.extend(old.into_keys());
        (changed, problems)
    }

    /// Replaces every EndpointSlice; returns the Services whose slices changed, and the
    /// objects that could not be identified.
    pub fn replace_slices(
        &mut self,
        slices: Vec<EndpointSlice>,
    ) -> (BTreeSet<ServiceName>, Vec<ObjectError>) {
        let mut old = std::mem::take(&mut self.slices);
        self.slices_by_service.clear();
        let mut changed = BTreeSet::new();
        let mut problems = Vec::new();
        let owner = |ns: &str, slice: &EndpointSlice| {
            slice_service(slice).map(|svc| ServiceName::new(ns, svc))
        };
        for slice in slices {
            let previous = slice
                .metadata
                .namespace
                .as_ref()
                .zip(slice.metadata.name.as_ref())
                .and_then(|(ns, n)| {
                    old.get_mut(ns)
                        .and_then(|m| m.remove(n))
                        .map(|p| (ns.clone(), p))
                });
            if previous.as_ref().is_some_and(|(_, p)| *p == slice) {
                // Unchanged: keep it without marking anything.
                if let Err(e) = self.upsert_slice(slice) {
                    problems.push(*e);
                }
                continue;
            }
            if let Some((ns, p)) = &previous {
                changed.extend(owner(ns, p));
            }
            match self.upsert_slice(slice) {
                Ok(affected) => changed.extend(affected),
                Err(e) => problems.push(*e),
            }
        }
        for (ns, gone) in &old {
            changed.extend(gone.values().filter_map(|slice| owner(ns, slice)));
        }
        (changed, problems)
    }

    pub fn node(&self) -> Option<&core::Node> {
        self.node.as_ref()
    }

    pub fn service(&self, name: &ServiceName) -> Option<&core::Service> {
        self.services.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = (&ServiceName, &core::Service)> {
        self.services.iter()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn slice_count(&self) -> usize {
        self.slices.values().map(BTreeMap::len).sum()
    }

    /// The slices of a Service, sorted by slice name.
    pub fn slices_of<'a>(
        &'a self,
        service: &ServiceName,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let in_namespace = self.slices.get(&service.namespace);
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(move |name| in_namespace?.get(name))
    }

    /// Every slice, for listing.
    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values().flat_map(BTreeMap::values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{ServiceBuilder, SliceBuilder};

    #[test]
    fn replacing_reports_exactly_what_changed() {
        let mut state = ClusterState::new();
        let a = ServiceBuilder::cluster_ip("ns", "a", "10.96.0.1")
            .port("http", 80)
            .build();
        let b = ServiceBuilder::cluster_ip("ns", "b", "10.96.0.2")
            .port("http", 80)
            .build();
        let (changed, _) = state.replace_services(vec![a.clone(), b.clone()]);
        assert_eq!(changed.len(), 2);
        let b2 = ServiceBuilder::cluster_ip("ns", "b", "10.96.0.2")
            .port("http", 81)
            .build();
        let c = ServiceBuilder::cluster_ip("ns", "c", "10.96.0.3")
            .port("http", 80)
            .build();
        let (changed, _) = state.replace_services(vec![b2, c]);
        let names: Vec<String> = changed.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["ns/a", "ns/b", "ns/c"]);

        let sa = SliceBuilder::new("ns", "a")
            .port("http", 8080)
            .endpoint("10.244.1.5", "n")
            .build();
        let sb = SliceBuilder::new("ns", "b")
            .port("http", 8080)
            .endpoint("10.244.1.6", "n")
            .build();
        let (changed, _) = state.replace_slices(vec![sa.clone(), sb]);
        assert_eq!(changed.len(), 2);
        // b's slice disappears, a's is unchanged, and a new slice of c appears.
        let sc = SliceBuilder::new("ns", "c")
            .port("http", 8080)
            .endpoint("10.244.1.7", "n")
            .build();
        let (changed, _) = state.replace_slices(vec![sa, sc]);
        let names: Vec<String> = changed.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["ns/b", "ns/c"]);
        assert_eq!(state.slices_of(&ServiceName::new("ns", "a")).count(), 1);
        assert_eq!(state.slice_count(), 2);
    }
}
