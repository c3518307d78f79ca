//! `map` over an array that lets go of each item once its result is built.
//!
//! Rhai's own `map(array, f)` borrows the array: over a temporary one, as in the natural code
//! `chunk(context, n).map(|c| "Summarize:\n" + c)`, every chunk stays alive until the last
//! prompt is built, so the chunks and the prompts are held together (a second and a third
//! copy of the context). This `map` takes the array by value: Rhai moves a temporary in and
//! hands a variable over as a copy of its slots (strings are shared, not copied), so each
//! chunk of a temporary array is freed as soon as its prompt exists, and a variable's array is
//! left as it was.
//!
//! The closure is called as Rhai's `map` calls it: bound to `this` with no argument, else with
//! the item, else with the item and its index (the first form that fits, found on the first
//! item and kept: Rhai tries them all on every item).

use rhai::{Array, Dynamic, Engine, EvalAltResult, FnPtr, INT, NativeCallContext};

use super::values::RhaiResult;

/// Registers `map(array, f)` over Rhai's own.
pub(crate) fn register(engine: &mut Engine) {
    engine.register_fn("map", map);
}

/// How the closure takes an item.
#[derive(Clone, Copy)]
enum Form {
    /// `|| this * 2`
    This,
    /// `|x| x * 2`
    Item,
    /// `|x, i| x * i`
    ItemIndex,
}

fn map(ctx: NativeCallContext<'_>, items: Array, f: FnPtr) -> RhaiResult<Array> {
    let mut mapped = Array::with_capacity(items.len());
    let mut form = None;
    for (index, mut item) in items.into_iter().enumerate() {
        let index = Dynamic::from(INT::try_from(index).unwrap_or(INT::MAX));
        let value = match form {
            Some(known) => call(&ctx, &f, known, &mut item, index),
            None => [Form::This, Form::Item, Form::ItemIndex]
                .into_iter()
                .try_fold(None, |found: Option<Dynamic>, next| match found {
                    Some(value) => Ok(Some(value)),
                    None => match call(&ctx, &f, next, &mut item, index.clone()) {
                        Ok(value) => {
                            form = Some(next);
                            Ok(Some(value))
                        }
                        Err(e) if wrong_arity(&e, &f) && !matches!(next, Form::ItemIndex) => {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    },
                })
                .map(Option::unwrap_or_default),
        }
        .map_err(|e| {
            Box::new(EvalAltResult::ErrorInFunctionCall(
                "map".to_owned(),
                ctx.call_source().unwrap_or("").to_owned(),
                e,
                rhai::Position::NONE,
            ))
        })?;
        mapped.push(value);
        // `item` ends here: the array's last hold on it, if the array was a temporary.
    }
    Ok(mapped)
}

fn call(
    ctx: &NativeCallContext<'_>,
    f: &FnPtr,
    form: Form,
    item: &mut Dynamic,
    index: Dynamic,
) -> RhaiResult<Dynamic> {
    match form {
        Form::This => f.call_raw(ctx, Some(item), []),
        Form::Item => f.call_raw(ctx, None, [item.clone()]),
        Form::ItemIndex => f.call_raw(ctx, None, [item.clone(), index]),
    }
}

/// Whether `error` says the closure does not take this many arguments.
fn wrong_arity(error: &EvalAltResult, f: &FnPtr) -> bool {
    matches!(error, EvalAltResult::ErrorFunctionNotFound(signature, _)
        if signature.starts_with(f.fn_name()))
}
