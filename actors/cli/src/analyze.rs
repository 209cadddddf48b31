//! `analyze`: checks across Route and DestinationPolicy manifests and the services the
//! master has (`istioctl analyze`'s job). Each finding has a code, the object and the
//! field; the command fails when there is one.

use std::collections::BTreeSet;

use actormesh::mesh::policy::analyze::{analyze, Finding, Named};
use actormesh::mesh::{Service, ServiceName};
use actormesh_master::manifest::{parse_object, Object};
use anyhow::Context as _;

use crate::args::AnalyzeArgs;
use crate::output::Format;
use crate::tables::{self, Column};

pub(crate) fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    let mut routes = Vec::new();
    let mut policies = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        match parse_object(file, &text)? {
            Object::Route(r) => routes.push(r),
            Object::DestinationPolicy(p) => policies.push(p),
            // A deployment, an authorization policy or a gateway's objects have nothing to
            // check across the traffic objects.
            Object::Deployment(_)
            | Object::AuthorizationPolicy(_)
            | Object::Gateway(_)
            | Object::HttpRoute(_) => {}
        }
    }
    let named: BTreeSet<ServiceName> = routes
        .iter()
        .filter_map(|r| ServiceName::parse(&r.spec.service, &r.namespace).ok())
        .chain(
            policies
                .iter()
                .filter_map(|p| ServiceName::parse(&p.spec.service, &p.namespace).ok()),
        )
        .collect();
    let services: Vec<Service> = if args.offline {
        Vec::new()
    } else {
        let client = args.api.client()?;
        let mut found = Vec::new();
        for name in &named {
            let path = format!("/v1/services/{}/{}", name.namespace, name.name);
            if let Some(v) = client.get_optional(&path)? {
                found.push(
                    serde_json::from_value(v).with_context(|| format!("the service at {path}"))?,
                );
            }
        }
        found
    };
    let r: Vec<_> = routes
        .iter()
        .map(|r| Named {
            namespace: &r.namespace,
            name: &r.name,
            spec: &r.spec,
        })
        .collect();
    let p: Vec<_> = policies
        .iter()
        .map(|p| Named {
            namespace: &p.namespace,
            name: &p.name,
            spec: &p.spec,
        })
        .collect();
    let mut findings = analyze(&r, &p, &services);
    if args.offline {
        // Without the registry every service would look unknown.
        findings.retain(|f| f.code != "AM1003");
    }
    match args.api.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&as_json(&findings))?),
        Format::Table if findings.is_empty() => println!("no findings"),
        Format::Table => print!("{}", table(&findings)),
    }
    if findings.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} finding(s)", findings.len())
    }
}

fn as_json(findings: &[Finding]) -> serde_json::Value {
    findings
        .iter()
        .map(|f| {
            serde_json::json!({
                "code": f.code,
                "object": f.object,
                "field": f.field,
                "message": f.message,
            })
        })
        .collect()
}

fn table(findings: &[Finding]) -> String {
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            vec![
                f.code.to_string(),
                f.object.clone(),
                f.field.clone(),
                f.message.clone(),
            ]
        })
        .collect();
    tables::render(
        &[
            Column::fit("CODE"),
            Column::fit("OBJECT"),
            Column::fit("FIELD"),
            Column::fit("MESSAGE"),
        ],
        &rows,
    )
}
