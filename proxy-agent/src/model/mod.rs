//! The cluster, normalised: Services, their endpoints and this node, as plain validated data.
//!
//! Pure: no tokio, kube client, aya or nftables here.

pub mod endpoints;
pub mod error;
pub mod fixtures;
pub mod ip;
pub mod node;
pub mod service;
pub mod state;

pub use endpoints::{Endpoint, EndpointsByPort, PortKey};
pub use error::{InvalidReason, ObjectError, ObjectKind};
pub use ip::IpFamily;
pub use node::NodeInfo;
pub use service::{
    AccelerationAnnotation, ForwardingAnnotation, Protocol, Service, ServiceName, ServicePort,
};
pub use state::ClusterState;
