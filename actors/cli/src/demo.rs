//! Actor types that `actormesh dev` hosts, so a new user can deploy something at once.

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use actormesh::agent::tasks::{ActorHost, Instance};

/// Asks an `echo` instance for its text back.
#[derive(Debug, Clone, Serialize, Deserialize, actormesh::RemoteMessage)]
#[remote(name = "demo.Echo/v1", reply = String)]
pub struct Echo(pub String);

/// Answers every [`Echo`] with its text; knows which instance (and version) it is.
#[derive(Debug, Default)]
pub struct Echoer {
    /// Its name on the node (its task id); empty when not started as a task.
    instance: String,
    /// Its deployment's version.
    version: String,
}

impl Echoer {
    /// The instance `i`.
    pub fn new(i: &Instance) -> Self {
        Self {
            instance: i.name.clone(),
            version: i.version.clone(),
        }
    }
}

impl Actor for Echoer {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Echo> for Echoer {
    type Result = String;
    fn handle(&mut self, m: Echo, _: &mut Context<Self>) -> String {
        m.0
    }
}

/// Asks an `echo` instance to greet someone: a message with a named field, to call with
/// JSON (`actormesh call default/echo demo.Greet/v1 '{"name": "you"}'`).
#[derive(Debug, Clone, Serialize, Deserialize, actormesh::RemoteMessage)]
#[remote(name = "demo.Greet/v1", reply = String)]
pub struct Greet {
    /// Who to greet.
    pub name: String,
}

#[actormesh::handler]
impl Handler<Greet> for Echoer {
    type Result = String;
    fn handle(&mut self, m: Greet, _: &mut Context<Self>) -> String {
        format!("hello, {}", m.name)
    }
}

/// Asks an `echo` instance what its call carried: the `end-user` metadata and the trace
/// (to see what a gateway passes on), and which instance and version answered (to see
/// where a route sent it).
#[derive(Debug, Clone, Serialize, Deserialize, actormesh::RemoteMessage)]
#[remote(name = "demo.Whoami/v1", reply = Carried)]
pub struct Whoami {}

/// What a [`Whoami`] call carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    /// The `end-user` metadata, if any.
    pub end_user: Option<String>,
    /// The trace id (hex), if the call was traced.
    pub trace_id: Option<String>,
    /// The instance that answered (its task id).
    #[serde(default)]
    pub instance: String,
    /// Its deployment's version.
    #[serde(default)]
    pub version: String,
}

#[actormesh::handler]
impl Handler<Whoami> for Echoer {
    type Result = actix::MessageResult<Whoami>;
    fn handle(&mut self, _: Whoami, _: &mut Context<Self>) -> Self::Result {
        let carried = actormesh::CallInfo::with_current(|c| Carried {
            end_user: c.and_then(|c| c.metadata().get("end-user").map(str::to_string)),
            trace_id: c
                .and_then(|c| c.trace())
                .map(|t| t.trace_id.iter().map(|b| format!("{b:02x}")).collect()),
            instance: self.instance.clone(),
            version: self.version.clone(),
        });
        actix::MessageResult(carried)
    }
}

/// An echo instance is healthy as long as it answers.
#[actormesh::handler]
impl Handler<actormesh::health::HealthCheck> for Echoer {
    type Result = Result<(), String>;
    fn handle(&mut self, _: actormesh::health::HealthCheck, _: &mut Context<Self>) -> Self::Result {
        Ok(())
    }
}

/// The deployment `actormesh dev` makes at its first start (manifest JSON, as the API
/// takes it): one `echo` instance, served as the service `default/echo`.
pub const ECHO_DEPLOYMENT: &str = r#"{"kind":"Deployment","name":"echo","spec":{"actor":"echo","version":"v1","replicas":1,"resources":{"need":"mem:64MiB"},"service":{}}}"#;

/// The namespace and name of [`ECHO_DEPLOYMENT`], and of the service it serves.
pub const ECHO_SERVICE: &str = "default/echo";

/// The demo types: `echo` ([`Echoer`]).
pub fn host() -> ActorHost {
    ActorHost::new().with_instance("echo", Echoer::new)
}
