//! Properties of the canonical argument form that the approval digest relies on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::{Map, Value};
use tool_sandbox::canonical::canonical_json;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\a-z]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,6}", inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// The same object with its keys inserted in reverse order, at every depth.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, item) in map.iter().rev() {
                out.insert(k.clone(), reversed(item));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

proptest! {
    #[test]
    fn canonical_text_parses_back_to_the_same_value_and_is_a_fixed_point(v in value()) {
        let c = canonical_json(&v).unwrap();
        let parsed: Value = serde_json::from_str(&c).unwrap();
        prop_assert_eq!(canonical_json(&parsed).unwrap(), c);
    }

    #[test]
    fn key_order_never_changes_the_canonical_text(v in value()) {
        prop_assert_eq!(canonical_json(&v).unwrap(), canonical_json(&reversed(&v)).unwrap());
    }

    #[test]
    fn different_values_never_share_a_canonical_text(a in value(), b in value()) {
        let (ca, cb) = (canonical_json(&a).unwrap(), canonical_json(&b).unwrap());
        let same_value = serde_json::from_str::<Value>(&ca).unwrap()
            == serde_json::from_str::<Value>(&cb).unwrap();
        prop_assert_eq!(ca == cb, same_value);
    }
}
