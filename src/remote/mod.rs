//! The harness against `smolvm serve` (`SMOLVM_HOST`, [`crate::Smolvm::remote`]): the same
//! operations as the CLI client, as HTTP requests to smolvm's API.

pub(crate) mod api;
pub(crate) mod endpoint;
pub(crate) mod http;
#[cfg(feature = "remote-tls")]
pub(crate) mod tls;

pub(crate) use api::{upload_too_large, ApiFacts, Remote};
pub(crate) use endpoint::Endpoint;
