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

use rhai::{Array, Dynamic, EvalAltResult, FnPtr, INT, Module, NativeCallContext};

use super::helpers::RegisterFn;
use super::values::RhaiResult;

/// Registers `map(array, f)` over Rhai's own.
pub(crate) fn register(engine: &mut Module) {
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
            None => first_call(&ctx, &f, &mut item, index, &mut form),
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

/// Calls `f` on the first item in the first form that fits, and records it in `form`.
fn first_call(
    ctx: &NativeCallContext<'_>,
    f: &FnPtr,
    item: &mut Dynamic,
    index: Dynamic,
    form: &mut Option<Form>,
) -> RhaiResult<Dynamic> {
    for next in [Form::This, Form::Item] {
        match call(ctx, f, next, item, index.clone()) {
            Ok(value) => {
                *form = Some(next);
                return Ok(value);
            }
            Err(e) if wrong_arity(&e, f) => {}
            Err(e) => return Err(e),
        }
    }
    let value = call(ctx, f, Form::ItemIndex, item, index)?;
    *form = Some(Form::ItemIndex);
    Ok(value)
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

#[cfg(test)]
mod tests {
    use crate::{Context, Repl};

    fn run(code: &str) -> String {
        let mut repl = Repl::builder(Context::from("ctx")).build();
        let outcome = repl.execute(code);
        outcome.error.unwrap_or(outcome.output)
    }

    #[test]
    fn prompts_built_from_a_read_context_are_the_pieces_with_their_prefix() {
        // A context read piece by piece (as `rlm run --context file.txt` reads one), with
        // characters of several bytes: the prompts are what they are over the same text given
        // as a string.
        let text = "line \u{e9}t\u{e9} \u{1f600}\n".repeat(40);
        let chars: Vec<char> = text.chars().collect();
        let mut built = crate::TextBuilder::new();
        for piece in chars.chunks(13) {
            built.push_str(&piece.iter().collect::<String>());
        }
        let code = "let prompts = chunk(context, 50).map(|c| \"Summarize:\\n\" + c); \
                    print(prompts.len()); print(prompts[0]); print(prompts[-1]); \
                    print(prompts.map(|p| p.sub_string(11)).reduce(|a, b| a + b, \"\") == context);";
        let pieces: Vec<String> = chars.chunks(50).map(|c| c.iter().collect()).collect();
        let expected = format!(
            "{}\nSummarize:\n{}\nSummarize:\n{}\ntrue\n",
            pieces.len(),
            pieces[0],
            pieces[pieces.len() - 1]
        );
        for context in [built.finish(), Context::Text(text.clone())] {
            let mut repl = Repl::builder(context).build();
            let outcome = repl.execute(code);
            assert_eq!(outcome.error, None);
            assert_eq!(outcome.output, expected);
        }
    }

    #[test]
    fn map_takes_the_forms_rhai_takes_and_leaves_a_variable_as_it_was() {
        assert_eq!(
            run("let xs = [1, 2, 3]; let ys = xs.map(|x| x * 10); print(`${xs} ${ys}`);"),
            "[1, 2, 3] [10, 20, 30]\n"
        );
        assert_eq!(run("print([5, 6].map(|x, i| x + i));"), "[5, 7]\n");
        assert_eq!(run("print([1, 2].map(|| this * 3));"), "[3, 6]\n");
        assert_eq!(
            run("fn twice(x) { x * 2 } print([4].map(Fn(\"twice\")));"),
            "[8]\n"
        );
        assert_eq!(run("print([].map(|x| x));"), "[]\n");
        // The context (a constant) can be mapped; it is not changed.
        assert_eq!(
            run("let n = chunk(context, 1).map(|c| c + \"!\"); print(`${n} ${context}`);"),
            "[\"c!\", \"t!\", \"x!\"] ctx\n"
        );
        // An error in the closure names `map` and the line.
        let error = run("let ys = [1, \"a\"].map(|x| x * 2);");
        assert!(error.contains("map"), "{error}");
    }
}
