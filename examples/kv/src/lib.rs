//! A key-value store as an actor type: its messages and the actor. The binary (`main.rs`)
//! serves it as an agent of a cluster and calls it as a client.

use std::collections::BTreeMap;

use actormesh::health::HealthCheck;
use actormesh::prelude::*;

/// The actor type's name: what the agent registers it as and a Deployment names in
/// `spec.actor`.
pub const ACTOR_TYPE: &str = "kv";

/// Sets `key` to `value`; the reply is the value it had.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "kv.Put/v1", reply = Option<String>)]
pub struct Put {
    /// The key.
    pub key: String,
    /// Its new value.
    pub value: String,
}

/// The value of `key`, if it has one. Idempotent: a failed try may be retried.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "kv.Get/v1", reply = Option<String>, idempotent)]
pub struct Get {
    /// The key.
    pub key: String,
}

/// Removes `key`; the reply is the value it had.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "kv.Delete/v1", reply = Option<String>)]
pub struct Delete {
    /// The key.
    pub key: String,
}

/// One instance's keys and values, in memory.
#[derive(Debug, Default)]
pub struct Kv {
    entries: BTreeMap<String, String>,
}

impl Actor for Kv {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Put> for Kv {
    type Result = Option<String>;
    fn handle(&mut self, m: Put, _: &mut Context<Self>) -> Option<String> {
        self.entries.insert(m.key, m.value)
    }
}

#[actormesh::handler]
impl Handler<Get> for Kv {
    type Result = Option<String>;
    fn handle(&mut self, m: Get, _: &mut Context<Self>) -> Option<String> {
        self.entries.get(&m.key).cloned()
    }
}

#[actormesh::handler]
impl Handler<Delete> for Kv {
    type Result = Option<String>;
    fn handle(&mut self, m: Delete, _: &mut Context<Self>) -> Option<String> {
        self.entries.remove(&m.key)
    }
}

/// Answers the agent's health checks (a Deployment with `health_check` asks them).
#[actormesh::handler]
impl Handler<HealthCheck> for Kv {
    type Result = Result<(), String>;
    fn handle(&mut self, _: HealthCheck, _: &mut Context<Self>) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn puts_gets_and_deletes_through_a_node() {
        let ca = actormesh::LocalCa::new("kv.local").unwrap();
        let node = ca.start_node("kv").unwrap();
        let kv = node.spawn("kv", Kv::default()).unwrap();
        let put = |value: &str| Put {
            key: "k".into(),
            value: value.into(),
        };
        assert_eq!(kv.ask(put("a")).await.unwrap(), None);
        assert_eq!(kv.ask(put("b")).await.unwrap(), Some("a".into()));
        let get = Get { key: "k".into() };
        assert_eq!(kv.ask(get.clone()).await.unwrap(), Some("b".into()));
        let del = Delete { key: "k".into() };
        assert_eq!(kv.ask(del).await.unwrap(), Some("b".into()));
        assert_eq!(kv.ask(get).await.unwrap(), None);
        assert_eq!(kv.ask(HealthCheck).await.unwrap(), Ok(()));
        node.shutdown();
    }
}
