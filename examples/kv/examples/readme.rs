//! The program of the top README's "Writing actors", as written there (a test keeps the two
//! the same).

use actormesh::prelude::*;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[remote(name = "hello.Greet/v1", reply = String)] // a stable wire name, not the Rust path
struct Greet {
    name: String,
}

struct Greeter;
impl Actor for Greeter {
    type Context = Context<Self>;
}

#[actormesh::handler] // registers the handler: no list to keep
impl Handler<Greet> for Greeter {
    type Result = String;
    fn handle(&mut self, m: Greet, _: &mut Context<Self>) -> String {
        format!("Hello, {}!", m.name)
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let creds = actormesh::transport::pki::Credentials::load("certs/server".as_ref())?;
    let node = Node::start(NodeConfig::new("127.0.0.1:7100".parse()?), &creds)?;
    node.spawn("greeter", Greeter)?;
    let other = node.actor_ref("127.0.0.1:7200".parse()?, "greeter");
    let reply: String = other
        .ask(Greet {
            name: "mesh".into(),
        })
        .await?;
    println!("{reply}");
    Ok(())
}
