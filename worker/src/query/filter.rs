//! `where` predicates compiled into DataFusion expressions for Lance scans.
//!
//! Values are bound as typed literals (`ScalarValue`), never spliced into
//! filter text, so a value such as `x' OR 1=1 --` is only ever a string.

use datafusion_common::{Column, ScalarValue};
use datafusion_expr::{lit, Expr};
use serde::Deserialize;
use serde_json::Value;

use super::QueryError;
use crate::contract::{NodeType, PropType};
use crate::store::value::{date_to_days, normalize, parse_date, parse_datetime};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    pub prop: String,
    pub op: String,
    #[serde(default)]
    pub value: Option<Value>,
}

fn bad(m: impl Into<String>) -> QueryError {
    QueryError::BadRequest(m.into())
}

/// A typed literal for a value already checked by [`normalize`].
fn scalar(ty: &PropType, v: &Value) -> Result<ScalarValue, QueryError> {
    let v = normalize(ty, v).map_err(bad)?;
    let s = v.as_str().unwrap_or_default();
    Ok(match ty {
        PropType::String => ScalarValue::Utf8(Some(s.to_string())),
        PropType::Bool => ScalarValue::Boolean(v.as_bool()),
        PropType::I32 => ScalarValue::Int32(v.as_i64().and_then(|n| i32::try_from(n).ok())),
        PropType::I64 => ScalarValue::Int64(v.as_i64()),
        PropType::F32 => ScalarValue::Float32(v.as_f64().map(|f| f as f32)),
        PropType::F64 => ScalarValue::Float64(v.as_f64()),
        PropType::Date => ScalarValue::Date32(Some(date_to_days(parse_date(s).map_err(bad)?))),
        PropType::DateTime => ScalarValue::TimestampMicrosecond(Some(parse_datetime(s).map_err(bad)?.timestamp_micros()), Some("UTC".into())),
        PropType::Blob | PropType::List(_) => return Err(bad(format!("cannot compare a {ty} property"))),
    })
}

fn like_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Compiles one predicate on a node type into a filter expression.
pub fn compile(t: &NodeType, p: &Predicate) -> Result<Expr, QueryError> {
    let prop = t.prop(&p.prop).ok_or_else(|| bad(format!("where: {} has no property {:?}", t.name, p.prop)))?;
    let col = Expr::Column(Column::new_unqualified(&prop.name));
    let value = || p.value.as_ref().filter(|v| !v.is_null()).ok_or_else(|| bad(format!("where: op {:?} on {:?} needs a non-null value (use is_null for nulls)", p.op, p.prop)));
    let ordered = || {
        if prop.ty.is_ordered() {
            Ok(())
        } else {
            Err(bad(format!("where: op {:?} does not apply to {} property {:?}", p.op, prop.ty, p.prop)))
        }
    };
    Ok(match p.op.as_str() {
        "=" => col.eq(lit(scalar(&prop.ty, value()?)?)),
        "!=" => col.not_eq(lit(scalar(&prop.ty, value()?)?)),
        "<" => {
            ordered()?;
            col.lt(lit(scalar(&prop.ty, value()?)?))
        }
        "<=" => {
            ordered()?;
            col.lt_eq(lit(scalar(&prop.ty, value()?)?))
        }
        ">" => {
            ordered()?;
            col.gt(lit(scalar(&prop.ty, value()?)?))
        }
        ">=" => {
            ordered()?;
            col.gt_eq(lit(scalar(&prop.ty, value()?)?))
        }
        "in" => {
            let items = value()?.as_array().ok_or_else(|| bad(format!("where: op \"in\" on {:?} needs an array value", p.prop)))?;
            if items.is_empty() {
                return Ok(lit(false));
            }
            let list = items.iter().map(|v| scalar(&prop.ty, v).map(lit)).collect::<Result<Vec<_>, _>>()?;
            col.in_list(list, false)
        }
        "prefix" => {
            if prop.ty != PropType::String {
                return Err(bad(format!("where: op \"prefix\" needs a String property, {:?} is {}", p.prop, prop.ty)));
            }
            let prefix = value()?.as_str().ok_or_else(|| bad("where: op \"prefix\" needs a string value"))?;
            Expr::Like(datafusion_expr::expr::Like::new(false, Box::new(col), Box::new(lit(like_escape(prefix))), Some('\\'), false))
        }
        "is_null" => match p.value.as_ref() {
            None | Some(Value::Bool(true)) => col.is_null(),
            Some(Value::Bool(false)) => col.is_not_null(),
            Some(_) => return Err(bad("where: op \"is_null\" takes true, false or no value")),
        },
        other => return Err(bad(format!("where: unknown op {other:?}; use = != < <= > >= in prefix is_null"))),
    })
}

/// All predicates, joined with AND.
/// The most predicates one `where` may hold. Each becomes a node of the
/// expression tree that DataFusion and Lance walk recursively, so the bound
/// keeps a small request from exhausting a worker thread's stack.
pub const MAX_WHERE: usize = 32;

/// ANDs the predicates (`query::validate` has bounded their number).
pub fn compile_all(t: &NodeType, preds: &[Predicate]) -> Result<Option<Expr>, QueryError> {
    let mut level = preds.iter().map(|p| compile(t, p)).collect::<Result<Vec<Expr>, _>>()?;
    // A balanced tree of ANDs: its depth grows with log2 of the predicates.
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut it = level.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => a.and(b),
                None => a,
            });
        }
        level = next;
    }
    Ok(level.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::GraphSchema;
    use serde_json::json;

    fn person() -> NodeType {
        GraphSchema::parse("node Person { name: String @key age: I64? born: Date? tags: [String]? }").unwrap().nodes.remove(0)
    }

    fn pred(prop: &str, op: &str, value: Value) -> Predicate {
        Predicate { prop: prop.into(), op: op.into(), value: Some(value) }
    }

    #[test]
    fn where_lists_fold_into_a_shallow_tree() {
        let many: Vec<Predicate> = (0..MAX_WHERE).map(|i| pred("age", ">=", json!(i))).collect();
        assert!(compile_all(&person(), &many).unwrap().is_some());
        let three = compile_all(&person(), &[pred("age", ">=", json!(1)), pred("age", "<", json!(9)), pred("name", "=", json!("x"))]).unwrap().unwrap();
        assert_eq!(three.to_string().matches(" AND ").count(), 2);
    }

    #[test]
    fn values_become_literals_not_text() {
        let e = compile(&person(), &pred("name", "=", json!("x' OR 1=1 --"))).unwrap();
        let Expr::BinaryExpr(b) = e else { panic!("not a comparison") };
        assert_eq!(*b.right, lit(ScalarValue::Utf8(Some("x' OR 1=1 --".into()))));
    }

    #[test]
    fn rejects_bad_predicates() {
        let t = person();
        for (p, needle) in [
            (pred("nope", "=", json!(1)), "no property"),
            (pred("age", "=", json!("old")), "expected I64"),
            (pred("age", "~", json!(1)), "unknown op"),
            (pred("tags", "<", json!(1)), "does not apply"),
            (pred("age", "prefix", json!("1")), "String property"),
            (pred("age", "in", json!(3)), "array"),
            (Predicate { prop: "age".into(), op: "=".into(), value: None }, "non-null"),
        ] {
            let e = compile(&t, &p).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(like_escape("50%_a\\"), "50\\%\\_a\\\\%");
    }
}
