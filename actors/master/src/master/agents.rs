//! Agents' messages: join (bootstrap port), register, heartbeat, renew and task status
//! reports (through the gate, with the verified caller).

use std::time::{Instant, SystemTime};

use actix::prelude::*;
use tracing::{info, warn};

use actormesh::protocol::{
    ClientCertReply, ClientCertRequest, Heartbeat, HeartbeatAck, JoinReply, JoinRequest,
    MasterRefusal, Register, Registered, Renew, ReportAck, TaskStatusReport,
};
use actormesh_transport::SpiffeId;

use super::Master;
use crate::state::StoreFuture;
use crate::tokens::JoinToken;

/// A join request from the bootstrap port.
#[derive(Debug, Message)]
#[rtype(result = "JoinReply")]
pub struct Join(pub JoinRequest);

impl Handler<Join> for Master {
    type Result = ResponseFuture<JoinReply>;
    fn handle(&mut self, m: Join, ctx: &mut Context<Self>) -> Self::Result {
        match self.join(m.0, ctx) {
            Ok((stored, reply)) => Box::pin(async move {
                match stored.await {
                    Ok(()) => reply,
                    Err(e) => JoinReply::Refused {
                        reason: format!("the master could not record the agent: {e}"),
                    },
                }
            }),
            Err(reason) => {
                warn!(%reason, "join refused");
                Box::pin(async move { JoinReply::Refused { reason } })
            }
        }
    }
}

/// A client certificate request from the bootstrap port: signed, or refused, at once;
/// nothing is stored and no member is added.
#[derive(Debug, Message)]
#[rtype(result = "ClientCertReply")]
pub struct IssueClient(pub ClientCertRequest);

impl Handler<IssueClient> for Master {
    type Result = MessageResult<IssueClient>;
    fn handle(&mut self, m: IssueClient, _: &mut Context<Self>) -> Self::Result {
        let signed = self
            .core
            .check_client(&m.0, SystemTime::now())
            .map_err(|e| e.to_string())
            .and_then(|admission| {
                self.keeper
                    .read()
                    .sign_csr(&m.0.csr_pem, &admission.identity, admission.cert_ttl)
                    .map(|cert| (admission.identity, cert))
                    .map_err(|e| format!("cannot sign the certificate request: {e}"))
            });
        match signed {
            Ok((identity, cert_pem)) => {
                info!(client = %identity, token = %m.0.token_id, "client certificate issued");
                MessageResult(ClientCertReply::Issued {
                    identity: identity.to_string(),
                    cert_pem,
                    master_addr: self.mesh_addr,
                })
            }
            Err(reason) => {
                warn!(%reason, "client certificate refused");
                MessageResult(ClientCertReply::Refused { reason })
            }
        }
    }
}

impl Master {
    /// Admits a joining node; the reply (its certificate) waits for its record.
    fn join(
        &mut self,
        req: JoinRequest,
        ctx: &mut Context<Self>,
    ) -> Result<(StoreFuture<()>, JoinReply), String> {
        let fingerprint = self.core.ca_fingerprint().to_string();
        let random_name = || {
            JoinToken::generate(&fingerprint)
                .ok()
                .map(|t| format!("agent-{}", t.id))
        };
        let admission = self
            .core
            .check_join(&req, random_name, SystemTime::now())
            .map_err(|e| e.to_string())?;
        let cert_pem = self
            .keeper
            .read()
            .sign_csr(&req.csr_pem, &admission.identity, admission.cert_ttl)
            .map_err(|e| format!("cannot sign the certificate request: {e}"))?;
        let agent_id = admission.agent_id.clone();
        let effects = self
            .core
            .admit(admission, Instant::now(), SystemTime::now());
        let stored = self.carry_out_stored(effects, ctx);
        Ok((
            stored,
            JoinReply::Accepted {
                agent_id,
                cert_pem,
                master_addr: self.mesh_addr,
            },
        ))
    }
}

/// An agent's registration with the verified identity of its sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<Registered, MasterRefusal>")]
pub(super) struct RegisterFrom(pub Register, pub Option<SpiffeId>);

impl Handler<RegisterFrom> for Master {
    type Result = ResponseFuture<Result<Registered, MasterRefusal>>;
    fn handle(&mut self, m: RegisterFrom, ctx: &mut Context<Self>) -> Self::Result {
        let step = self
            .core
            .register(m.0, m.1, Instant::now(), SystemTime::now());
        self.answer(step, ctx, |e| {
            MasterRefusal::Unavailable(format!("the master could not record the agent: {e}"))
        })
    }
}

/// An agent's heartbeat with the verified identity of its sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<HeartbeatAck, MasterRefusal>")]
pub(super) struct HeartbeatFrom(pub Heartbeat, pub Option<SpiffeId>);

impl Handler<HeartbeatFrom> for Master {
    type Result = Result<HeartbeatAck, MasterRefusal>;
    fn handle(&mut self, m: HeartbeatFrom, ctx: &mut Context<Self>) -> Self::Result {
        let step = self
            .core
            .heartbeat(&m.0, m.1, Instant::now(), SystemTime::now());
        // Not awaited: no one waits for the write, and a failed one makes the master step
        // down.
        self.carry_out(step.effects, ctx);
        self.switch_ca_when_ready(ctx);
        step.reply
    }
}

/// An agent's certificate renewal with the verified identity of its sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, MasterRefusal>")]
pub(super) struct RenewFrom(pub Renew, pub Option<SpiffeId>);

impl Handler<RenewFrom> for Master {
    type Result = ResponseFuture<Result<String, MasterRefusal>>;
    fn handle(&mut self, m: RenewFrom, ctx: &mut Context<Self>) -> Self::Result {
        let agent_id = m.0.agent_id;
        let signed = self
            .core
            .check_renewal(&agent_id, m.1, Instant::now(), SystemTime::now())
            .and_then(|(identity, ttl)| {
                self.keeper
                    .read()
                    .sign_csr(&m.0.csr_pem, &identity, ttl)
                    .map_err(|e| MasterRefusal::Forbidden(format!("cannot sign the renewal: {e}")))
            });
        let cert = match signed {
            Ok(cert) => cert,
            Err(refusal) => return Box::pin(async move { Err(refusal) }),
        };
        let effects = self.core.renewed(&agent_id, SystemTime::now());
        let stored = self.carry_out_stored(effects, ctx);
        super::when_stored(stored, cert, |e| {
            MasterRefusal::Unavailable(format!("the master could not record the renewal: {e}"))
        })
    }
}

/// A task state report from an agent, with the verified sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<ReportAck, MasterRefusal>")]
pub(super) struct TaskStatusFrom(pub TaskStatusReport, pub Option<SpiffeId>);

impl Handler<TaskStatusFrom> for Master {
    type Result = Result<ReportAck, MasterRefusal>;
    fn handle(&mut self, m: TaskStatusFrom, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.task_status(m.0, m.1, Instant::now());
        self.carry_out(step.effects, ctx);
        step.reply
    }
}
