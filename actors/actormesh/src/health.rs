//! Health checks of actor tasks: a deployment with a `health_check` has its instances
//! asked [`HealthCheck`] by their agent every interval. An actor type answers `Ok(())`
//! when it is ready to serve; an error, no answer within the timeout, or no handler at
//! all count as failures.

use serde::{Deserialize, Serialize};

use crate::RemoteMessage;

/// Are you healthy?
#[derive(Debug, Clone, Copy, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.Health/v1", reply = Result<(), String>)]
pub struct HealthCheck;
