//! The `#[task]` attribute of `pool-core`.
//!
//! Do not depend on this crate directly: use `pool_core::task`, which re-exports it. The generated
//! code names only `::pool_core::__private::…`, so a user never adds `inventory`, `serde` or
//! `rmp-serde` themselves.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::visit::Visit;
use syn::{FnArg, ItemFn, LitStr, ReturnType, Token, Type};

/// Turns a plain function into a task that pool workers can run by name.
///
/// See the documentation of `pool_core::task` for the full description and examples.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = match syn::parse::<TaskArgs>(attr) {
        Ok(args) => args,
        Err(err) => return err.to_compile_error().into(),
    };
    let func = match syn::parse::<ItemFn>(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let tokens: TokenStream2 = item.into();
            return syn::Error::new_spanned(
                tokens,
                "#[task] goes on a plain function: `#[task] fn name(arg: Type) -> Output { … }`",
            )
            .to_compile_error()
            .into();
        }
    };
    match expand(args, func) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Puts `pool_core::init()` first in the function (meant for `main`), so that a process started
/// as a spawned pool worker serves its pool instead of running the program.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr: TokenStream2 = attr.into();
        return syn::Error::new_spanned(attr, "#[pool_core::main] takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut func = match syn::parse::<ItemFn>(item) {
        Ok(func) => func,
        Err(err) => {
            return syn::Error::new(err.span(), "#[pool_core::main] goes on `fn main`")
                .to_compile_error()
                .into()
        }
    };
    let init: syn::Stmt = syn::parse_quote!(::pool_core::init(););
    func.block.stmts.insert(0, init);
    quote!(#func).into()
}

/// The attribute's own arguments: `name = "…"`, `retries = N`, `retry_on_panic`, in any order.
struct TaskArgs {
    name: Option<LitStr>,
    retries: Option<syn::LitInt>,
    retry_on_panic: bool,
}

impl Parse for TaskArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = TaskArgs {
            name: None,
            retries: None,
            retry_on_panic: false,
        };
        let twice =
            |key: &syn::Ident| syn::Error::new_spanned(key, format!("`{key}` is given twice"));
        while !input.is_empty() {
            let key: syn::Ident = input.parse()?;
            if key == "name" {
                input.parse::<Token![=]>()?;
                let value: LitStr = input.parse()?;
                if value.value().is_empty() {
                    return Err(syn::Error::new_spanned(
                        &value,
                        "a task name cannot be empty",
                    ));
                }
                if args.name.is_some() {
                    return Err(twice(&key));
                }
                args.name = Some(value);
            } else if key == "retries" {
                input.parse::<Token![=]>()?;
                let value: syn::LitInt = input.parse()?;
                value.base10_parse::<u32>().map_err(|_| {
                    syn::Error::new_spanned(&value, "`retries` takes a whole number (a u32)")
                })?;
                if args.retries.is_some() {
                    return Err(twice(&key));
                }
                args.retries = Some(value);
            } else if key == "retry_on_panic" {
                if args.retry_on_panic {
                    return Err(twice(&key));
                }
                args.retry_on_panic = true;
            } else {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!(
                        "unknown #[task] option `{key}`; the options are `name = \"…\"`, \
                         `retries = N` and `retry_on_panic`"
                    ),
                ));
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

fn expand(args: TaskArgs, func: ItemFn) -> syn::Result<TokenStream2> {
    check_signature(&func)?;

    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = func;
    let name = sig.ident.clone();
    let inner = format_ident!("__pool_task_impl");
    sig.ident = inner.clone();

    // Docs and `cfg` belong to the public item; every other attribute (`inline`, `allow`, …)
    // stays on the function that holds the body.
    let (outer_attrs, inner_attrs): (Vec<_>, Vec<_>) = attrs
        .into_iter()
        .partition(|a| a.path().is_ident("doc") || a.path().is_ident("cfg"));
    let cfg_attrs: Vec<_> = outer_attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect();

    let param_types: Vec<&Type> = sig
        .inputs
        .iter()
        .map(|arg| match arg {
            FnArg::Typed(pat) => &*pat.ty,
            FnArg::Receiver(_) => unreachable!("receivers are rejected by check_signature"),
        })
        .collect();
    let output: TokenStream2 = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => ty.to_token_stream(),
    };
    let idents: Vec<_> = (0..param_types.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let (args_ty, destructure) = match param_types.len() {
        0 => (quote!(()), quote!(let () = args;)),
        1 => {
            let ty = param_types[0];
            let id = &idents[0];
            (quote!(#ty), quote!(let #id = args;))
        }
        _ => (
            quote!((#(#param_types,)*)),
            quote!(let (#(#idents,)*) = args;),
        ),
    };
    let task_name = match &args.name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#name)
        )),
    };
    let krate = quote!(::pool_core::__private);
    let retries = args.retries.as_ref().map(
        |n| quote!(const RETRIES: ::core::option::Option<u32> = ::core::option::Option::Some(#n);),
    );
    let retry_on_panic = args.retry_on_panic.then(|| {
        quote!(
            const RETRY_ON_PANIC: bool = true;
        )
    });

    let struct_doc = if outer_attrs.iter().any(|a| a.path().is_ident("doc")) {
        quote!()
    } else {
        let text = format!(" The `{name}` task (see `#[task]`).");
        quote!(#[doc = #text])
    };

    Ok(quote! {
        #(#outer_attrs)*
        #struct_doc
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #vis struct #name;

        #(#cfg_attrs)*
        const _: () = {
            #(#inner_attrs)*
            #sig #block

            impl ::core::ops::Deref for #name {
                type Target = fn(#(#param_types),*) -> #output;
                fn deref(&self) -> &Self::Target {
                    const F: fn(#(#param_types),*) -> #output = #inner;
                    &F
                }
            }

            impl #krate::Task for #name {
                type Args = #args_ty;
                type Output = #output;
                const NAME: &'static str = #task_name;
                #retries
                #retry_on_panic
                fn call(args: Self::Args) -> Self::Output {
                    #destructure
                    #inner(#(#idents),*)
                }
            }

            #krate::inventory::submit! {
                #krate::TaskEntry::new::<#name>(
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                    ::core::file!(),
                    ::core::line!(),
                )
            }
        };
    })
}

/// Rejects every signature a worker could not call by name with MessagePack arguments, pointing
/// at the offending token and saying what to write instead.
fn check_signature(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            token,
            "a task cannot be `async`: workers run tasks to completion in their own process; \
             write a plain `fn` (await the pool's AsyncResult on the caller's side instead)",
        ));
    }
    if let Some(token) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            token,
            "a task cannot be `unsafe fn`: its caller is another process that cannot uphold a \
             safety contract; make the function safe and use `unsafe {}` inside it",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "a task cannot have an `extern` ABI; write a plain Rust `fn` and call the foreign \
             function from its body",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "a task cannot be variadic; take a `Vec<T>` instead",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a task cannot be generic: workers look tasks up by name, so every task needs \
             concrete types; write one #[task] per concrete type",
        ));
    }
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(recv) => {
                return Err(syn::Error::new_spanned(
                    recv,
                    "a task cannot be a method: `self` cannot travel to a worker; write a free \
                     function and pass the value it needs as a parameter",
                ));
            }
            FnArg::Typed(pat) => check_owned(&pat.ty, "parameter")?,
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        check_owned(ty, "return type")?;
    }
    Ok(())
}

/// A task's parameters and result cross a process boundary, so they must be owned, nameable
/// serde types: no references, no `impl Trait`, no trait objects, no bare functions.
fn check_owned(ty: &Type, what: &str) -> syn::Result<()> {
    struct Finder {
        found: Option<syn::Error>,
        what: String,
    }
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            if self.found.is_none() {
                self.found = Some(syn::Error::new_spanned(
                    r,
                    format!(
                        "a task {} must be an owned type: it is sent to another process as \
                         MessagePack; use `String` for `&str`, `Vec<T>` for `&[T]`, or `T` for `&T`",
                        self.what
                    ),
                ));
            }
        }
        fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
            if self.found.is_none() {
                self.found = Some(syn::Error::new_spanned(
                    t,
                    format!(
                        "a task {} cannot be `impl Trait`: workers need a concrete type to \
                         decode; name the type",
                        self.what
                    ),
                ));
            }
        }
        fn visit_type_trait_object(&mut self, t: &'ast syn::TypeTraitObject) {
            if self.found.is_none() {
                self.found = Some(syn::Error::new_spanned(
                    t,
                    format!(
                        "a task {} cannot be a trait object: workers need a concrete, \
                         serializable type",
                        self.what
                    ),
                ));
            }
        }
        fn visit_type_bare_fn(&mut self, t: &'ast syn::TypeBareFn) {
            if self.found.is_none() {
                self.found = Some(syn::Error::new_spanned(
                    t,
                    format!(
                        "a task {} cannot be a function pointer: code does not travel between \
                         processes; pass a #[task] name or data instead",
                        self.what
                    ),
                ));
            }
        }
        fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
            if self.found.is_none() {
                self.found = Some(syn::Error::new(
                    l.span(),
                    format!(
                        "a task {} cannot borrow (lifetime `{}`): use an owned type",
                        self.what, l
                    ),
                ));
            }
        }
    }
    let mut finder = Finder {
        found: None,
        what: what.to_owned(),
    };
    finder.visit_type(ty);
    match finder.found {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
