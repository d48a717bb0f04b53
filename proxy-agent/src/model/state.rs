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

    /// Replaces this node's Node object.
    pub fn set_node(&mut self, node: Option<core::Node>) {
        self.node = node;
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
