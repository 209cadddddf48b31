//! Istio's bookinfo sample as actormesh services: every service is an actor type that this
//! crate's agent binary hosts, and they call each other by service name through the mesh.
//!
//! ```text
//! gateway ──HTTP──> productpage ──> details
//!                        └────────> reviews (v1: no stars; v2: black; v3: red) ──> ratings
//! ```
//!
//! - `productpage` renders the page as HTML (the gateway's route serves it as
//!   `text/html`). The user is the query's `u` (`/productpage?u=jason`), or else the
//!   `end-user` header the gateway passes on; productpage calls reviews with it as the
//!   propagated `end-user` metadata, which is what the routes match.
//! - `reviews-v2` and `reviews-v3` ask `ratings` (their calls inherit `end-user`); `v1`
//!   does not. A ratings call that fails shows "Ratings service is currently unavailable".
//! - Each reply says which version and node served it, as Istio's page names the pod.

use std::collections::BTreeMap;
use std::time::Duration;

use actormesh::mesh::{Mesh, ServiceRef};
use actormesh::prelude::*;
use actormesh::AskError;

/// The one book of the sample.
pub const PRODUCT_ID: &str = "0";

/// The actor types this binary hosts, with what each is: the names deployments give as
/// `spec.actor`.
pub const ACTOR_TYPES: [&str; 6] = [
    "productpage",
    "details",
    "reviews-v1",
    "reviews-v2",
    "reviews-v3",
    "ratings",
];

/// productpage's timeout for details and for reviews, as the Istio sample's (3 s).
pub const PAGE_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// reviews' timeout for ratings: a ratings delay past it shows the ratings as unavailable.
pub const RATINGS_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The product page of a book, as HTML. `u`: the signed-in user (the query's `u`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "bookinfo.ProductPage/v1", reply = String, idempotent)]
pub struct ProductPage {
    /// The book (default [`PRODUCT_ID`]).
    #[serde(default)]
    pub id: Option<String>,
    /// The user, if signed in.
    #[serde(default)]
    pub u: Option<String>,
}

/// A book's details.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "bookinfo.Details/v1", reply = BookDetails, idempotent)]
pub struct GetDetails {
    /// The book.
    pub id: String,
}

/// What details knows of a book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookDetails {
    /// The book.
    pub id: String,
    /// Its author.
    pub author: String,
    /// The year it was written.
    pub year: u32,
    /// paperback or hardcover.
    pub kind: String,
    /// Pages.
    pub pages: u32,
    /// Its publisher.
    pub publisher: String,
    /// Its language.
    pub language: String,
    /// ISBN-10.
    pub isbn_10: String,
    /// ISBN-13.
    pub isbn_13: String,
}

/// A book's reviews.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "bookinfo.Reviews/v1", reply = ProductReviews, idempotent)]
pub struct GetReviews {
    /// The book.
    pub id: String,
}

/// The reviews of a book, from one version of reviews.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductReviews {
    /// The book.
    pub id: String,
    /// The version that answered: `v1`, `v2` or `v3`.
    pub version: String,
    /// The node it runs on.
    pub node: String,
    /// The reviews.
    pub reviews: Vec<Review>,
}

/// One review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Who wrote it.
    pub reviewer: String,
    /// What they wrote.
    pub text: String,
    /// Its rating (`None` from v1, which shows none).
    pub rating: Option<Rating>,
}

/// A review's rating, as a version of reviews shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rating {
    /// Stars out of five, in this colour.
    Stars {
        /// 1 to 5.
        stars: u8,
        /// `black` (v2) or `red` (v3).
        color: String,
    },
    /// ratings could not be asked: `timeout`, `denied` or `unavailable`, and the error.
    Unavailable {
        /// The kind of failure.
        error: String,
        /// The error as the mesh gave it.
        detail: String,
    },
}

/// A book's ratings.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "bookinfo.Ratings/v1", reply = ProductRatings, idempotent)]
pub struct GetRatings {
    /// The book.
    pub id: String,
}

/// Stars by reviewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRatings {
    /// The book.
    pub id: String,
    /// Stars (1 to 5) by reviewer.
    pub ratings: BTreeMap<String, u8>,
}

/// The product page: asks details and reviews, renders HTML.
#[derive(Debug)]
pub struct ProductPageActor {
    details: ServiceRef,
    reviews: ServiceRef,
}

impl ProductPageActor {
    /// The page, calling `details` and `reviews` of the mesh's namespace.
    pub fn new(mesh: &Mesh) -> Self {
        Self {
            details: mesh.service("details").expect("a valid service name"),
            reviews: mesh.service("reviews").expect("a valid service name"),
        }
    }
}

impl Actor for ProductPageActor {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<ProductPage> for ProductPageActor {
    type Result = actix::ResponseFuture<String>;
    fn handle(&mut self, m: ProductPage, _: &mut Context<Self>) -> Self::Result {
        let info = CallInfo::current().unwrap_or_default();
        let (details, reviews) = (self.details.clone(), self.reviews.clone());
        // The user: the query's, else the `end-user` the call carries (the gateway's
        // header). Passed on to reviews as propagated metadata, so that routes on
        // reviews and on ratings (which reviews calls) see it.
        let user =
            m.u.filter(|u| !u.is_empty())
                .or_else(|| info.metadata().get("end-user").map(str::to_string));
        let id = m.id.unwrap_or_else(|| PRODUCT_ID.to_string());
        Box::pin(info.scope(async move {
            let mut options = actormesh::mesh::CallOptions::default().timeout(PAGE_CALL_TIMEOUT);
            if let Some(u) = &user {
                options = options.propagated("end-user", u.clone());
            }
            let (d, r) = futures::join!(
                details.ask_timeout(GetDetails { id: id.clone() }, PAGE_CALL_TIMEOUT),
                reviews.ask_with(GetReviews { id }, &options),
            );
            render_page(user.as_deref(), &d, &r)
        }))
    }
}

/// details: the book's facts.
#[derive(Debug, Default)]
pub struct DetailsActor;

impl Actor for DetailsActor {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<GetDetails> for DetailsActor {
    type Result = MessageResult<GetDetails>;
    fn handle(&mut self, m: GetDetails, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BookDetails {
            id: m.id,
            author: "William Shakespeare".into(),
            year: 1595,
            kind: "paperback".into(),
            pages: 200,
            publisher: "PublisherA".into(),
            language: "English".into(),
            isbn_10: "1234567890".into(),
            isbn_13: "123-1234567890".into(),
        })
    }
}

/// The two reviews of the sample, by reviewer.
const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

/// reviews, one version: v1 shows no ratings, v2 black stars, v3 red stars.
#[derive(Debug)]
pub struct ReviewsActor {
    version: &'static str,
    /// The colour of the stars; `None` (v1): ratings is not asked.
    color: Option<&'static str>,
    ratings: ServiceRef,
    node: String,
}

impl ReviewsActor {
    /// Version `version` (`v1`, `v2` or `v3`) of reviews.
    pub fn new(mesh: &Mesh, version: &'static str) -> Self {
        let color = match version {
            "v2" => Some("black"),
            "v3" => Some("red"),
            _ => None,
        };
        Self {
            version,
            color,
            ratings: mesh.service("ratings").expect("a valid service name"),
            node: mesh.node().identity().to_string(),
        }
    }
}

impl Actor for ReviewsActor {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<GetReviews> for ReviewsActor {
    type Result = actix::ResponseFuture<ProductReviews>;
    fn handle(&mut self, m: GetReviews, _: &mut Context<Self>) -> Self::Result {
        let info = CallInfo::current().unwrap_or_default();
        let (version, color, node) = (self.version, self.color, self.node.clone());
        let ratings = self.ratings.clone();
        Box::pin(info.scope(async move {
            let stars = match color {
                None => None,
                // The ask inherits the call's propagated `end-user`.
                Some(_) => Some(
                    ratings
                        .ask_timeout(GetRatings { id: m.id.clone() }, RATINGS_CALL_TIMEOUT)
                        .await,
                ),
            };
            let reviews = REVIEWS
                .iter()
                .map(|(reviewer, text)| Review {
                    reviewer: reviewer.to_string(),
                    text: text.to_string(),
                    rating: match (&stars, color) {
                        (Some(Ok(r)), Some(color)) => {
                            r.ratings.get(*reviewer).map(|&stars| Rating::Stars {
                                stars,
                                color: color.to_string(),
                            })
                        }
                        (Some(Err(e)), _) => Some(Rating::Unavailable {
                            error: failure_kind(e).to_string(),
                            detail: e.to_string(),
                        }),
                        _ => None,
                    },
                })
                .collect();
            ProductReviews {
                id: m.id,
                version: version.to_string(),
                node,
                reviews,
            }
        }))
    }
}

/// How a call to ratings failed, as the page says it.
fn failure_kind(e: &AskError) -> &'static str {
    match e {
        AskError::Timeout { .. } => "timeout",
        AskError::PermissionDenied { .. } => "denied",
        _ => "unavailable",
    }
}

/// ratings: the stars each reviewer gave.
#[derive(Debug, Default)]
pub struct RatingsActor;

impl Actor for RatingsActor {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<GetRatings> for RatingsActor {
    type Result = MessageResult<GetRatings>;
    fn handle(&mut self, m: GetRatings, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ProductRatings {
            id: m.id,
            ratings: BTreeMap::from([("Reviewer1".into(), 5), ("Reviewer2".into(), 4)]),
        })
    }
}

/// Every actor type of bookinfo, for an agent to host.
pub fn host() -> actormesh::agent::ActorHost {
    actormesh::agent::ActorHost::new()
        .with_mesh("productpage", ProductPageActor::new)
        .with("details", || DetailsActor)
        .with_mesh("reviews-v1", |mesh| ReviewsActor::new(mesh, "v1"))
        .with_mesh("reviews-v2", |mesh| ReviewsActor::new(mesh, "v2"))
        .with_mesh("reviews-v3", |mesh| ReviewsActor::new(mesh, "v3"))
        .with("ratings", || RatingsActor)
}

/// `s` with `&`, `<`, `>`, `"` and `'` escaped, for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;color:#222}\
nav{background:#1f2937;color:#fff;padding:12px 24px;display:flex;justify-content:space-between}\
nav a{color:#9cd3ff}main{padding:0 24px}\
.cols{display:flex;gap:48px}.cols section{flex:1}\
blockquote{border-left:4px solid #ddd;margin:16px 0;padding:4px 16px}\
.stars{font-size:24px;letter-spacing:2px}.stars.black{color:black}.stars.red{color:red}\
.error{color:#b45309}.served{color:#666;font-size:small}";

/// The product page for `user` from what details and reviews answered. Pure: the
/// actor's handler and the tests call it.
pub fn render_page(
    user: Option<&str>,
    details: &Result<BookDetails, AskError>,
    reviews: &Result<ProductReviews, AskError>,
) -> String {
    let mut h = String::with_capacity(4096);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<title>Simple Bookstore App</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>\n<nav><span>BookInfo Sample, on actormesh</span>");
    match user {
        Some(u) => h.push_str(&format!(
            "<span id=\"user\">signed in as <b>{}</b> · <a href=\"/productpage\">sign out</a></span>",
            escape(u)
        )),
        None => h.push_str(
            "<span id=\"user\"><a href=\"/productpage?u=jason\">sign in as jason</a></span>",
        ),
    }
    h.push_str("</nav>\n<main><h1>The Comedy of Errors</h1>\n");
    h.push_str("<p>Summary: Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.</p>\n<div class=\"cols\">");
    h.push_str("<section id=\"details\"><h2>Book Details</h2>");
    match details {
        Ok(d) => h.push_str(&format!(
            "<dl><dt>Type:</dt><dd>{}</dd><dt>Pages:</dt><dd>{}</dd><dt>Publisher:</dt><dd>{}</dd><dt>Language:</dt><dd>{}</dd><dt>ISBN-10:</dt><dd>{}</dd><dt>ISBN-13:</dt><dd>{}</dd></dl>",
            escape(&d.kind),
            d.pages,
            escape(&d.publisher),
            escape(&d.language),
            escape(&d.isbn_10),
            escape(&d.isbn_13)
        )),
        Err(e) => h.push_str(&format!(
            "<p class=\"error\" id=\"details-error\" title=\"{}\">Sorry, product details are currently unavailable for this book.</p>",
            escape(&e.to_string())
        )),
    }
    h.push_str("</section>\n");
    match reviews {
        Ok(r) => {
            h.push_str(&format!(
                "<section id=\"reviews\" data-version=\"{}\"><h2>Book Reviews</h2>",
                escape(&r.version)
            ));
            for review in &r.reviews {
                h.push_str(&format!(
                    "<blockquote class=\"review\"><p>{}</p><small>{}</small>",
                    escape(&review.text),
                    escape(&review.reviewer)
                ));
                match &review.rating {
                    None => {}
                    Some(Rating::Stars { stars, color }) => {
                        let stars = (*stars).min(5) as usize;
                        h.push_str(&format!(
                            "<div class=\"stars {0}\" data-stars=\"{1}\" data-color=\"{0}\" aria-label=\"{1} of 5 stars\">{2}{3}</div>",
                            escape(color),
                            stars,
                            "★".repeat(stars),
                            "☆".repeat(5 - stars)
                        ));
                    }
                    Some(Rating::Unavailable { error, detail }) => h.push_str(&format!(
                        "<p class=\"error ratings-error\" data-error=\"{}\" title=\"{}\">Ratings service is currently unavailable</p>",
                        escape(error),
                        escape(detail)
                    )),
                }
                h.push_str("</blockquote>");
            }
            h.push_str(&format!(
                "<p class=\"served\">Reviews served by: reviews-{} on {}</p></section>",
                escape(&r.version),
                escape(&r.node)
            ));
        }
        Err(e) => h.push_str(&format!(
            "<section id=\"reviews\"><h2>Book Reviews</h2><p class=\"error\" id=\"reviews-error\" data-error=\"{}\" title=\"{}\">Sorry, product reviews are currently unavailable for this book.</p></section>",
            failure_kind(e),
            escape(&e.to_string())
        )),
    }
    // What the browser renders, written into the DOM for a test that reads it back
    // (`chromium --dump-dom`): each star block's computed colour.
    h.push_str("</div></main>\n<script>for (const s of document.querySelectorAll('.stars')) s.dataset.rendered = getComputedStyle(s).color;</script>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviews(version: &str, rating: Option<Rating>) -> ProductReviews {
        ProductReviews {
            id: "0".into(),
            version: version.into(),
            node: "spiffe://cluster.local/node/b2".into(),
            reviews: vec![Review {
                reviewer: "Reviewer1".into(),
                text: "<fun>".into(),
                rating,
            }],
        }
    }

    fn details() -> Result<BookDetails, AskError> {
        Ok(BookDetails {
            id: "0".into(),
            author: "W".into(),
            year: 1595,
            kind: "paperback".into(),
            pages: 200,
            publisher: "P".into(),
            language: "English".into(),
            isbn_10: "1".into(),
            isbn_13: "2".into(),
        })
    }

    #[test]
    fn the_page_shows_stars_in_their_colour_or_none_and_escapes_what_users_give() {
        let v1 = render_page(None, &details(), &Ok(reviews("v1", None)));
        assert!(!v1.contains("class=\"stars"), "{v1}");
        assert!(v1.contains("data-version=\"v1\"") && v1.contains("&lt;fun&gt;"));
        assert!(v1.contains("Pages:</dt><dd>200"));
        let stars = Some(Rating::Stars {
            stars: 4,
            color: "red".into(),
        });
        let v3 = render_page(Some("<jason>"), &details(), &Ok(reviews("v3", stars)));
        assert!(
            v3.contains("class=\"stars red\" data-stars=\"4\"") && v3.contains("★★★★☆"),
            "{v3}"
        );
        assert!(v3.contains("<b>&lt;jason&gt;</b>"), "the user is escaped");
        let down = Some(Rating::Unavailable {
            error: "timeout".into(),
            detail: "x".into(),
        });
        let slow = render_page(None, &details(), &Ok(reviews("v2", down)));
        assert!(slow.contains("data-error=\"timeout\""), "{slow}");
        assert!(slow.contains("Ratings service is currently unavailable"));
        let none = render_page(
            None,
            &Err(AskError::Rejected("no".into())),
            &Err(AskError::Rejected("no".into())),
        );
        assert!(none.contains("product details are currently unavailable"));
        assert!(none.contains("product reviews are currently unavailable"));
    }

    #[actix::test]
    async fn versions_ask_ratings_or_not_and_say_why_it_failed() {
        let ca = actormesh::LocalCa::new("bookinfo.local").unwrap();
        let node = ca.start_node("b").unwrap();
        let mesh = Mesh::start(&node, Default::default()).unwrap();
        // No ratings endpoint in this mesh: v2 says so, v1 never asks.
        let v1 = node.spawn("v1", ReviewsActor::new(&mesh, "v1")).unwrap();
        let v2 = node.spawn("v2", ReviewsActor::new(&mesh, "v2")).unwrap();
        let get = || GetReviews { id: "0".into() };
        let r1 = v1.ask(get()).await.unwrap();
        assert_eq!(r1.version, "v1");
        assert!(r1.reviews.iter().all(|r| r.rating.is_none()), "{r1:?}");
        let r2 = v2.ask(get()).await.unwrap();
        assert!(
            r2.reviews.iter().all(|r| matches!(
                &r.rating,
                Some(Rating::Unavailable { error, .. }) if error == "unavailable"
            )),
            "{r2:?}"
        );
        let ratings = node.spawn("ratings", RatingsActor).unwrap();
        let r = ratings.ask(GetRatings { id: "0".into() }).await.unwrap();
        assert_eq!(r.ratings["Reviewer1"], 5);
        node.shutdown();
    }
}
