// `#[actormesh::handler]` on a message that does not derive RemoteMessage: one error,
// which says to derive it.
use actormesh::prelude::*;

#[derive(Serialize, Deserialize, actix::Message)]
#[rtype(result = "()")]
struct Plain;

struct A;
impl Actor for A {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Plain> for A {
    type Result = ();
    fn handle(&mut self, _: Plain, _: &mut Context<Self>) {}
}

fn main() {}
