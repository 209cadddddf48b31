// A message without `reply =` replies `()`: a handler that returns something else is told
// to declare it.
use actormesh::prelude::*;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Count/v1")]
struct Count;

struct A;
impl Actor for A {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Count> for A {
    type Result = usize;
    fn handle(&mut self, _: Count, _: &mut Context<Self>) -> usize {
        7
    }
}

fn main() {}
