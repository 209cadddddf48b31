//! A node that joined the cluster serves its own actors as services, outside the
//! scheduler: Pilot's register and deregister. The registration lives as long as the node's
//! membership; deregistering drains first; a client identity may call but not register.

mod traffic;

use std::collections::BTreeMap;
use std::time::Duration;

use actormesh::agent::tasks::ActorHost;
use actormesh::mesh::{MeshError, ServiceName};
use actormesh::AskError;
use traffic::*;

#[actix::test]
async fn a_node_registers_its_own_actor_and_callers_reach_it_until_it_deregisters() {
    let c = cluster("registered", vec![("own", ActorHost::new())]).await;
    let agent = &c.agents[0];
    agent
        .node
        .spawn(
            "mine",
            Instance {
                id: "own-mine".into(),
                delay: Duration::ZERO,
            },
        )
        .unwrap();
    let service = ServiceName::parse("tools/mine", "default").unwrap();
    agent
        .mesh()
        .register_service(service.clone(), "mine", "v7", BTreeMap::new(), 1)
        .await
        .unwrap();
    let caller = c.caller("caller").await;
    let eps = wait_endpoints(&caller, "tools/mine", Duration::from_secs(10), |e| {
        e.len() == 1
    })
    .await;
    assert_eq!(eps[0].actor, "mine");
    assert_eq!(eps[0].version, "v7");
    assert_eq!(eps[0].node, agent.node.identity().to_string());
    let mine = caller.service("tools/mine").unwrap();
    assert_eq!(mine.ask(Who(1)).await.unwrap(), "own-mine");

    // A client has no membership for a registration to live as long as.
    let refused = caller
        .register_service(service.clone(), "x", "v1", BTreeMap::new(), 1)
        .await;
    assert!(
        matches!(refused, Err(MeshError::Refused(_))),
        "a client registered a service: {refused:?}"
    );

    // Deregistration is answered once the endpoint left every proxy (drained).
    agent
        .mesh()
        .deregister_service(service.clone(), "mine")
        .await
        .unwrap();
    wait_endpoints(&caller, "tools/mine", Duration::from_secs(10), |e| {
        e.is_empty()
    })
    .await;
    match mine.ask(Who(2)).await {
        Err(AskError::NoEndpoints { service }) => assert_eq!(service, "tools/mine"),
        other => panic!("expected NoEndpoints, got {other:?}"),
    }
}
