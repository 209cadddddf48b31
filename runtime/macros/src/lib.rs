//! Macros for actormesh remote messages and handlers.
//!
//! - `#[derive(RemoteMessage)]` with `#[remote(name = "pkg.Msg/v1", reply = T)]` makes a serde
//!   type an actix `Message` with a stable wire name and a typed reply.
//! - `#[actormesh::handler]` on `impl Handler<M> for A` registers the handler so that every
//!   node hosting an `A` accepts `M` from the network; no list is kept by hand.
#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{parse_macro_input, spanned::Spanned, DeriveInput, ItemImpl, LitStr, Path, Type};

/// Declares a remote message: `#[remote(name = "bookinfo.ratings.Get/v1", reply = Rating)]`.
///
/// The name goes on the wire instead of the Rust path, so a type can be renamed or moved,
/// and two versions of a message can live side by side during a rolling upgrade. The name
/// must be 1 to 255 bytes of printable ASCII without spaces. `reply` defaults to `()`.
/// `idempotent` declares that handling the message twice does what handling it once does,
/// so a call may be retried after any error (without it, only after `NotDelivered`).
/// `crate = "path"` names the actormesh crate if it is not `::actormesh`.
#[proc_macro_derive(RemoteMessage, attributes(remote))]
pub fn derive_remote_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand_message(&input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_message(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let mut name: Option<LitStr> = None;
    let mut reply: Option<Type> = None;
    let mut krate: Option<Path> = None;
    let mut idempotent = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("remote")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("reply") {
                reply = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("idempotent") {
                idempotent = true;
            } else if meta.path.is_ident("crate") {
                let s: LitStr = meta.value()?.parse()?;
                krate = Some(s.parse()?);
            } else {
                return Err(meta.error(
                    "expected `name = \"...\"`, `reply = Type`, `idempotent` or `crate = \"path\"`",
                ));
            }
            Ok(())
        })?;
    }
    let name = name.ok_or_else(|| {
        syn::Error::new(
            input.span(),
            "RemoteMessage needs #[remote(name = \"pkg.Message/v1\", reply = ReplyType)]",
        )
    })?;
    let value = name.value();
    if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(syn::Error::new(
            name.span(),
            "a remote message name must be 1 to 255 bytes of printable ASCII without spaces, e.g. \"shop.cart.Add/v1\"",
        ));
    }
    let reply = reply.unwrap_or_else(|| syn::parse_quote!(()));
    let krate = krate.unwrap_or_else(|| syn::parse_quote!(::actormesh));
    let ident = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_g #krate::__private::actix::Message for #ident #ty_g #where_g {
            type Result = #reply;
        }
        impl #impl_g #krate::RemoteMessage for #ident #ty_g #where_g {
            const NAME: &'static str = #name;
            const IDEMPOTENT: bool = #idempotent;
        }
    })
}

/// Registers `impl Handler<M> for A` for remote delivery.
///
/// Put it on the impl block. It keeps the impl as written and adds what the runtime needs
/// to deliver an `M` that arrives from the network (or from a location-transparent
/// reference) to any `A` that a node hosts. The entry also decodes `M` from JSON and
/// encodes its reply as JSON (serde_json, through the same serde derives), for callers
/// without the Rust types (`RemoteRef::ask_json`, the CLI, the gateway).
/// `#[handler(crate = "path")]` names the actormesh crate if it is not `::actormesh`.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as ItemImpl);
    let mut krate: Path = syn::parse_quote!(::actormesh);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let s: LitStr = meta.value()?.parse()?;
            krate = s.parse()?;
            Ok(())
        } else {
            Err(meta.error("expected `crate = \"path\"`"))
        }
    });
    parse_macro_input!(attr with parser);
    match expand_handler(&item, &krate) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_handler(item: &ItemImpl, krate: &Path) -> syn::Result<TokenStream2> {
    let err = || {
        syn::Error::new(
            item.span(),
            "#[handler] goes on `impl Handler<Message> for Actor { ... }`",
        )
    };
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "#[handler] cannot register a generic impl: name the actor and message types",
        ));
    }
    let (_, trait_path, _) = item.trait_.as_ref().ok_or_else(err)?;
    let last = trait_path.segments.last().ok_or_else(err)?;
    if last.ident != "Handler" {
        return Err(err());
    }
    let msg = match &last.arguments {
        syn::PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
            syn::GenericArgument::Type(t) => t.clone(),
            _ => return Err(err()),
        },
        _ => return Err(err()),
    };
    let actor = &item.self_ty;
    let reply_check = handler_result(item).filter(|t| is_plain_reply(t)).map(|t| {
        quote! {
            const _: () = #krate::__private::reply_is::<#msg, #t>();
        }
    });
    // Every bound is in the one call of `register`: a message that is not a
    // RemoteMessage is one error, which says to derive it.
    Ok(quote! {
        #item

        const _: () = {
            const REGISTRATION: #krate::__private::Registration<#actor, #msg> =
                #krate::__private::register::<#actor, #msg>();

            impl #krate::__private::actix::Handler<#krate::__private::Delivery<#msg>> for #actor {
                type Result = ();
                fn handle(
                    &mut self,
                    delivery: #krate::__private::Delivery<#msg>,
                    ctx: &mut <Self as #krate::__private::actix::Actor>::Context,
                ) {
                    (REGISTRATION.deliver)(delivery, self, ctx)
                }
            }

            #krate::__private::inventory::submit! {
                REGISTRATION.entry
            }

            #reply_check
        };
    })
}

/// The impl's `type Result = T;`.
fn handler_result(item: &ItemImpl) -> Option<&Type> {
    item.items.iter().find_map(|i| match i {
        syn::ImplItem::Type(t) if t.ident == "Result" => Some(&t.ty),
        _ => None,
    })
}

/// Whether a handler's `Result` type is the reply itself (a type the message's reply must
/// equal), not one of actix's response wrappers (futures, `MessageResult`, ...) whose
/// relation to the reply the compiler checks in its own way.
fn is_plain_reply(t: &Type) -> bool {
    const WRAPPERS: &[&str] = &[
        "MessageResult",
        "ResponseFuture",
        "ResponseActFuture",
        "Response",
        "ActorResponse",
        "AtomicResponse",
        "Pin",
        "Box",
    ];
    match t {
        Type::Tuple(_) => true,
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident != "Self" && !WRAPPERS.iter().any(|w| s.ident == w)),
        _ => false,
    }
}
