//! Attribute macros for [smolvm-harness](https://docs.rs/smolvm-harness). Use them through
//! that crate (`#[smolvm_harness::requires_smolvm]`): the expansion refers to
//! `::smolvm_harness`, so this crate alone is of no use.
//!
//! Written on plain [`proc_macro`] tokens, without `syn` or `quote`: the one macro here only
//! needs to find a function's body and put a statement in front of it, and a test-only
//! dependency of many crates should not pull a full Rust parser into every build.

#![deny(missing_docs)]

use proc_macro::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};

/// Skip this test at run time when smolvm is not installed; fail it instead when
/// `SMOLVM_HARNESS_REQUIRE=1`.
///
/// Put it **under** `#[rstest]` (or on a plain `#[test]`):
///
/// ```ignore
/// use rstest::rstest;
/// use smolvm_harness::{fixtures::machine, requires_smolvm, Machine};
///
/// #[rstest]
/// #[requires_smolvm]
/// fn boots(machine: Machine) {
///     machine.exec(&["true"]).unwrap().assert_success();
/// }
/// ```
///
/// The function's body gets `::smolvm_harness::require_smolvm!();` as its first statement.
/// rstest copies the attributes below `#[rstest]` onto the `#[test]` function it generates,
/// whose body resolves the fixtures and then calls the original function; the check
/// therefore returns before any fixture is evaluated, so a skipped test creates nothing.
///
/// With `#[case]`s, mind where it goes: rstest gives each case the attributes written
/// before its `#[case]` line, and every case the attributes after the last one.
///
/// * **After the last `#[case]`**: every case, and every `#[values]` combination, is guarded.
/// * **Above `#[rstest]`**: the check would otherwise land inside the original function,
///   after the fixtures were built; instead the attribute moves itself below the item's
///   last attribute (below every `#[case]`) and leaves the function alone, so this is the
///   same as the placement above.
/// * **Directly under `#[rstest]` with no `#[case]`** (fixtures, `#[values]`): every test is
///   guarded.
/// * **Above a `#[case]`** (directly under `#[rstest]` before the first, or between two):
///   a compile error. It would guard that one case and let the others run without smolvm.
///   rstest keeps each case's argument expressions at their source location in the case's
///   generated body, so a `let` located between this attribute and the function's name
///   gives the placement away.
///
/// Where smolvm is missing and `SMOLVM_HARNESS_REQUIRE=1`, the test fails with the reason,
/// reported at the line of this attribute.
///
/// A skipped test returns `()` or `Ok(())` (any return type implementing
/// `smolvm_harness::skip::SkipReturn`), found by type inference, so `-> Result<(), E>`, aliases
/// of it and `-> std::process::ExitCode` all work. The attribute takes no arguments and
/// applies only to functions with a body; anything else is a compile error.
#[proc_macro_attribute]
pub fn requires_smolvm(attr: TokenStream, item: TokenStream) -> TokenStream {
    // On misuse, the error comes with the item unchanged, so that the one error is all the
    // user sees (no follow-on "cannot find" errors for an item that vanished).
    let mut attr = attr.into_iter();
    let moved = match attr.next() {
        None => false,
        // Only this macro writes the marker, when it moves itself below the `#[case]` lines.
        Some(TokenTree::Ident(id)) if id.to_string() == MOVED_MARKER && attr.next().is_none() => {
            true
        }
        Some(first) => {
            let mut out = compile_error(
                first.span(),
                "`#[requires_smolvm]` takes no arguments; the skip reason is worked out at run \
                 time",
            );
            out.extend(item);
            return out;
        }
    };
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    let first_span = tokens.first().map_or_else(Span::call_site, TokenTree::span);

    let Some(fn_pos) = tokens.iter().position(|t| is_ident(t, "fn")) else {
        return with_item(
            compile_error(
                first_span,
                "`#[requires_smolvm]` applies to a test function (under `#[rstest]` or on a \
                 `#[test]` fn), not to this item",
            ),
            tokens,
        );
    };
    // The body is the brace group that ends the item: `fn name(..) -> T where .. { body }`.
    // Anything else (a declaration ending in `;`, a `static X: fn()`) has no body to guard.
    let body_pos = tokens.len() - 1;
    let body = match &tokens[body_pos] {
        TokenTree::Group(g) if g.delimiter() == Delimiter::Brace && body_pos > fn_pos => g,
        _ => {
            return with_item(
                compile_error(
                    first_span,
                    "`#[requires_smolvm]` applies to a test function with a body",
                ),
                tokens,
            );
        }
    };

    if has_rstest_attribute(&tokens[..fn_pos]) {
        // Above `#[rstest]`: re-emit ourselves as the last outer attribute, below every
        // `#[case]`. rstest then copies us onto every generated test function (each case,
        // each `#[values]` combination), where the check runs before fixture resolution.
        // Right below `#[rstest]` would guard the first case only.
        let end = outer_attributes_end(&tokens[..fn_pos]);
        let mut out: Vec<TokenTree> = tokens[..end].to_vec();
        out.extend(self_attribute());
        out.extend(tokens[end..].iter().cloned());
        return out.into_iter().collect();
    }

    if !moved {
        if let Some(name) = tokens.get(fn_pos + 1) {
            if written_above_a_case(body, name.span()) {
                return with_item(compile_error(Span::call_site(), MISPLACED), tokens);
            }
        }
    }

    let mut out: Vec<TokenTree> = tokens[..body_pos].to_vec();
    out.push(TokenTree::Group(guarded_body(body)));
    out.into_iter().collect()
}

/// The argument of the attribute this macro re-emits when it moves itself; not for users.
const MOVED_MARKER: &str = "__below_cases";

const MISPLACED: &str = "`#[requires_smolvm]` written above a `#[case]` guards that case only \
     (rstest gives each case the attributes written before its `#[case]` line, and the other \
     cases would run without smolvm): write it after the last `#[case]`, or above `#[rstest]`";

/// Whether this function is a case that rstest generated from a `#[case]` line written
/// *below* this attribute, which then guards that one case only.
///
/// rstest turns each case into a function whose body starts with one `let` per argument,
/// `let n = <expression from the #[case] line>;`, keeping the expression's source location,
/// and names that function with the span of the original function's name. A `let` token
/// located after this attribute and before that name therefore comes from a `#[case]` line
/// written in between. Everything else in a body is located elsewhere: fixtures and
/// `#[values]` in the signature (after the name), rstest's own tokens at `#[rstest]` (above
/// this attribute, or this check does not run), `#[timeout]` outside the `let`s. Where
/// locations are unknown (all equal, other files), nothing is between and nothing is flagged.
fn written_above_a_case(body: &Group, fn_name: Span) -> bool {
    let attr = Span::call_site();
    let file = attr.file();
    if fn_name.file() != file {
        return false;
    }
    let after_attr = |s: &Span| (s.line(), s.column()) > (attr.line(), attr.column());
    let before_name = |s: &Span| (s.line(), s.column()) < (fn_name.line(), fn_name.column());
    let mut in_let = false;
    let mut stack: Vec<TokenStream> = Vec::new();
    for tree in body.stream() {
        match &tree {
            TokenTree::Ident(id) if id.to_string() == "let" => in_let = true,
            TokenTree::Punct(p) if p.as_char() == ';' => in_let = false,
            _ if in_let => stack.push(tree.clone().into()),
            _ => {}
        }
    }
    while let Some(stream) = stack.pop() {
        for tree in stream {
            let span = tree.span();
            if span.file() == file && after_attr(&span) && before_name(&span) {
                return true;
            }
            if let TokenTree::Group(g) = tree {
                stack.push(g.stream());
            }
        }
    }
    false
}

/// The index just after the item's outer attributes (`#[..]` pairs, doc comments included).
fn outer_attributes_end(tokens: &[TokenTree]) -> usize {
    let mut i = 0;
    while let (Some(TokenTree::Punct(p)), Some(TokenTree::Group(g))) =
        (tokens.get(i), tokens.get(i + 1))
    {
        if p.as_char() != '#' || g.delimiter() != Delimiter::Bracket {
            break;
        }
        i += 2;
    }
    i
}

/// `body` with the check as its first statement, after any inner attributes (`#![allow]`),
/// which must stay first in a block.
fn guarded_body(body: &Group) -> Group {
    let inner: Vec<TokenTree> = body.stream().into_iter().collect();
    let mut split = 0;
    while let (
        Some(TokenTree::Punct(hash)),
        Some(TokenTree::Punct(bang)),
        Some(TokenTree::Group(g)),
    ) = (inner.get(split), inner.get(split + 1), inner.get(split + 2))
    {
        if hash.as_char() == '#' && bang.as_char() == '!' && g.delimiter() == Delimiter::Bracket {
            split += 3;
        } else {
            break;
        }
    }
    // The attribute's own span: a `SMOLVM_HARNESS_REQUIRE=1` failure is reported at the
    // `#[requires_smolvm]` line (rstest gives its generated body the `#[rstest]` line).
    let span = Span::call_site();
    let mut stream: Vec<TokenTree> = inner[..split].to_vec();
    stream.extend(path(&["smolvm_harness", "require_smolvm"], span));
    stream.push(punct('!', Spacing::Alone, span));
    stream.push(TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        TokenStream::new(),
    )));
    stream.push(punct(';', Spacing::Alone, span));
    stream.extend(inner[split..].iter().cloned());
    let mut group = Group::new(Delimiter::Brace, stream.into_iter().collect());
    group.set_span(body.span());
    group
}

/// Whether one of the outer attributes in `attrs` is `#[rstest]` (or `#[rstest::rstest]`,
/// with or without arguments).
fn has_rstest_attribute(attrs: &[TokenTree]) -> bool {
    let mut i = 0;
    while i + 1 < attrs.len() {
        if let (TokenTree::Punct(p), TokenTree::Group(g)) = (&attrs[i], &attrs[i + 1]) {
            if p.as_char() == '#' && g.delimiter() == Delimiter::Bracket {
                let path: Vec<String> = g
                    .stream()
                    .into_iter()
                    .take_while(|t| !matches!(t, TokenTree::Group(_)))
                    .filter_map(|t| match t {
                        TokenTree::Ident(id) => Some(id.to_string()),
                        _ => None,
                    })
                    .collect();
                if path.last().is_some_and(|last| last == "rstest") {
                    return true;
                }
                i += 2;
                continue;
            }
        }
        i += 1;
    }
    false
}

/// `#[::smolvm_harness::requires_smolvm(__below_cases)]`, located at this attribute (where a
/// `SMOLVM_HARNESS_REQUIRE=1` failure is reported).
fn self_attribute() -> Vec<TokenTree> {
    let span = Span::call_site();
    let mut inner = path(&["smolvm_harness", "requires_smolvm"], span);
    inner.push(TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        TokenTree::Ident(Ident::new(MOVED_MARKER, span)).into(),
    )));
    let inner: TokenStream = inner.into_iter().collect();
    vec![
        punct('#', Spacing::Alone, span),
        TokenTree::Group(Group::new(Delimiter::Bracket, inner)),
    ]
}

/// `::a::b` as tokens.
fn path(segments: &[&str], span: Span) -> Vec<TokenTree> {
    let mut out = Vec::new();
    for seg in segments {
        out.push(punct(':', Spacing::Joint, span));
        out.push(punct(':', Spacing::Alone, span));
        out.push(TokenTree::Ident(Ident::new(seg, span)));
    }
    out
}

fn punct(c: char, spacing: Spacing, span: Span) -> TokenTree {
    let mut p = Punct::new(c, spacing);
    p.set_span(span);
    TokenTree::Punct(p)
}

fn is_ident(t: &TokenTree, word: &str) -> bool {
    matches!(t, TokenTree::Ident(id) if id.to_string() == word)
}

fn with_item(mut error: TokenStream, item: Vec<TokenTree>) -> TokenStream {
    error.extend(item);
    error
}

/// `::core::compile_error!("msg");` pointing at `span`.
fn compile_error(span: Span, msg: &str) -> TokenStream {
    let mut lit = Literal::string(msg);
    lit.set_span(span);
    let mut out = path(&["core", "compile_error"], span);
    out.push(punct('!', Spacing::Alone, span));
    let mut args = Group::new(Delimiter::Parenthesis, TokenTree::Literal(lit).into());
    args.set_span(span);
    out.push(TokenTree::Group(args));
    out.push(punct(';', Spacing::Alone, span));
    out.into_iter().collect()
}
