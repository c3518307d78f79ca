//! Sorting with a closure, both ways models write it: Rhai's two-argument comparer
//! (`xs.sort(|a, b| b.v - a.v)`) and Python's one-argument key (`sort_by(xs, |x| x.v)`).
//!
//! Rhai's own `sort(array, comparer)` (and its alias `sort_by`) treats any result that is not
//! an integer or a boolean, and any error the closure raises, as "equal": a comparer over float
//! fields, or a key closure, leaves the array unsorted without a word. These replacements sort
//! by the sign of a float, take a key closure for what it is, and raise every other problem.

use std::cmp::Ordering;
use std::panic::{AssertUnwindSafe, catch_unwind};

use rhai::{Array, Dynamic, EvalAltResult, FnPtr, FuncRegistration, Module, NativeCallContext};

use super::helpers::{RegisterFn, RegisterInto};
use super::values::{RhaiResult, compare, script_error, to_text};

/// Registers `sort` / `sort_by` (in place) and `sorted_by` / `sorted` (a sorted copy), each
/// with a closure and an optional `true` for descending order.
pub(crate) fn register(engine: &mut Module) {
    for name in ["sort", "sort_by"] {
        // Not pure: they change their target, so `context.sort(...)` fails loudly.
        FuncRegistration::new(name)
            .with_purity(false)
            .register_into(
                engine,
                move |ctx: NativeCallContext<'_>, items: &mut Array, f: FnPtr| {
                    sort_in_place(&ctx, name, items, &f, false)
                },
            );
        FuncRegistration::new(name)
            .with_purity(false)
            .register_into(
                engine,
                move |ctx: NativeCallContext<'_>, items: &mut Array, f: FnPtr, descending: bool| {
                    sort_in_place(&ctx, name, items, &f, descending)
                },
            );
    }
    for name in ["sorted_by", "sorted"] {
        engine.register_fn(
            name,
            move |ctx: NativeCallContext<'_>, mut items: Array, f: FnPtr| {
                sort_in_place(&ctx, name, &mut items, &f, false).map(|()| items)
            },
        );
        engine.register_fn(
            name,
            move |ctx: NativeCallContext<'_>, mut items: Array, f: FnPtr, descending: bool| {
                sort_in_place(&ctx, name, &mut items, &f, descending).map(|()| items)
            },
        );
    }
}

/// Sorts `items` with `f`: a key closure (one argument) or a comparer (two). Stable; on any
/// error the array is left as it was.
fn sort_in_place(
    ctx: &NativeCallContext<'_>,
    function: &str,
    items: &mut Array,
    f: &FnPtr,
    descending: bool,
) -> RhaiResult<()> {
    if items.len() < 2 {
        return Ok(());
    }
    let order = match form(ctx, function, items, f)? {
        Form::Key(first) => key_order(ctx, function, items, f, first, descending)?,
        Form::Comparer => comparer_order(ctx, function, items, f, descending)?,
    };
    let mut slots: Vec<Option<Dynamic>> = std::mem::take(items).into_iter().map(Some).collect();
    *items = order
        .iter()
        .filter_map(|&i| slots.get_mut(i).and_then(Option::take))
        .collect();
    Ok(())
}

enum Form {
    /// A key closure, with the key of the first item.
    Key(Dynamic),
    Comparer,
}

/// Which form `f` has, found by calling it on the first two items.
fn form(ctx: &NativeCallContext<'_>, function: &str, items: &Array, f: &FnPtr) -> RhaiResult<Form> {
    match f.call_raw(ctx, None, [items[0].clone(), items[1].clone()]) {
        Ok(_) => Ok(Form::Comparer),
        Err(e) if wrong_arity(&e, f) => match f.call_raw(ctx, None, [items[0].clone()]) {
            Ok(key) => Ok(Form::Key(key.flatten())),
            Err(e) if wrong_arity(&e, f) => Err(script_error(format!(
                "{function}: the closure must take one argument (a key: \
                 {function}(xs, |x| x.price)) or two (a comparer: |a, b| a.price - b.price)"
            ))),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

fn wrong_arity(error: &EvalAltResult, f: &FnPtr) -> bool {
    matches!(error, EvalAltResult::ErrorFunctionNotFound(signature, _)
        if signature.starts_with(f.fn_name()))
}

/// The stable order of `items` by the keys `f` gives them (computed once per item).
fn key_order(
    ctx: &NativeCallContext<'_>,
    function: &str,
    items: &Array,
    f: &FnPtr,
    first: Dynamic,
    descending: bool,
) -> RhaiResult<Vec<usize>> {
    let mut keys = Vec::with_capacity(items.len());
    keys.push(first);
    for item in &items[1..] {
        keys.push(f.call_raw(ctx, None, [item.clone()])?.flatten());
    }
    let mut failure = None;
    let order = stable_order(items.len(), descending, |a, b| {
        compare(&keys[a], &keys[b]).unwrap_or_else(|| {
            failure.get_or_insert_with(|| {
                script_error(format!(
                    "{function}: cannot compare the keys {} and {} (a {} and a {}); the key \
                     closure must give numbers, strings or arrays of them for every item",
                    to_text(&keys[a]),
                    to_text(&keys[b]),
                    keys[a].type_name(),
                    keys[b].type_name()
                ))
            });
            Ordering::Equal
        })
    });
    match (failure, order) {
        (Some(error), _) | (None, Err(error)) => Err(error),
        (None, Ok(order)) => Ok(order),
    }
}

/// The stable order of `items` by the comparer `f`.
fn comparer_order(
    ctx: &NativeCallContext<'_>,
    function: &str,
    items: &Array,
    f: &FnPtr,
    descending: bool,
) -> RhaiResult<Vec<usize>> {
    let mut failure = None;
    let order = stable_order(items.len(), descending, |a, b| {
        if failure.is_some() {
            return Ordering::Equal;
        }
        compared(ctx, function, f, &items[a], &items[b]).unwrap_or_else(|e| {
            failure = Some(e);
            Ordering::Equal
        })
    });
    match (failure, order) {
        (Some(error), _) | (None, Err(error)) => Err(error),
        (None, Ok(order)) => Ok(order),
    }
}

/// How the comparer orders `a` and `b`: by the sign of a number; a boolean means "a comes
/// first" (Rhai's rule); anything else is an error.
fn compared(
    ctx: &NativeCallContext<'_>,
    function: &str,
    f: &FnPtr,
    a: &Dynamic,
    b: &Dynamic,
) -> RhaiResult<Ordering> {
    let result = f.call_raw(ctx, None, [a.clone(), b.clone()])?.flatten();
    if let Ok(n) = result.as_int() {
        return Ok(n.cmp(&0));
    }
    if let Ok(x) = result.as_float() {
        return x.partial_cmp(&0.0).ok_or_else(|| {
            script_error(format!(
                "{function}: the comparer returned NaN (not a number)"
            ))
        });
    }
    if let Ok(first) = result.as_bool() {
        if first {
            return Ok(Ordering::Less);
        }
        // `a` does not come first: does `b`?
        let other = f.call_raw(ctx, None, [b.clone(), a.clone()])?.flatten();
        return Ok(if other.as_bool().unwrap_or(false) {
            Ordering::Greater
        } else {
            Ordering::Equal
        });
    }
    Err(script_error(format!(
        "{function}: the comparer returned a {} ({}); it must return a number (negative: a \
         comes first, positive: b comes first). To sort by a field use a key closure: \
         sort_by(xs, |x| x.field), or sort_by(xs, |x| x.field, true) for descending.",
        result.type_name(),
        to_text(&result)
    )))
}

/// `0..n` sorted stably by `cmp` (reversed if `descending`, ties kept in order); an error if `cmp` is not a consistent order (Rust's sort
/// may notice and panic).
fn stable_order(
    n: usize,
    descending: bool,
    mut cmp: impl FnMut(usize, usize) -> Ordering,
) -> RhaiResult<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    let sort = || {
        order.sort_by(|&a, &b| {
            let o = cmp(a, b);
            if descending { o.reverse() } else { o }
        });
    };
    catch_unwind(AssertUnwindSafe(sort)).map_err(|_| {
        script_error(
            "sort: the comparer is not consistent (e.g. it says a < b and b < a); return \
             a - b for numbers, or use a key closure: sort_by(xs, |x| x.field)",
        )
    })?;
    Ok(order)
}
