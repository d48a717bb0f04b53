//! Kubernetes Events about Services the agent cannot program.

use k8s_openapi::api::core::v1 as core;

use crate::model::ObjectError;

/// Where "this Service cannot be programmed" goes. The sync loop calls it once each time the
/// set of problems of a Service changes (not on every sync); implementations must not block
/// (publish in the background).
pub trait EventSink: Send + Sync {
    /// `service` is the object as last seen; `errors` are all of its current problems.
    fn service_invalid(&self, service: &core::Service, errors: &[ObjectError]);
}

/// Logs only: used without a Kubernetes client (the files source).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogEvents;

impl EventSink for LogEvents {
    fn service_invalid(&self, service: &core::Service, errors: &[ObjectError]) {
        for e in errors {
            tracing::warn!(
                service = %format!(
                    "{}/{}",
                    service.metadata.namespace.as_deref().unwrap_or_default(),
                    service.metadata.name.as_deref().unwrap_or_default()
                ),
                problem = %e,
                "cannot program part of a Service"
            );
        }
    }
}
