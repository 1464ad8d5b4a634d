//! Conversations (spec section 1, shapes 1 and 4): LongAlign `messages` ({role, content})
//! and ShareGPT `conversations` ({from, value}) reduced to the first user turn and the first
//! assistant turn after it. The system turn is set aside (it reaches the model only through
//! a chat template), and the turns after the scored pair are counted for the warning.

use serde_json::{Map, Value};

/// The scored pair of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The first system turn before the user turn, if any.
    pub system: Option<String>,
    pub user: String,
    pub assistant: String,
    /// Turns after the first assistant turn, which are not scored.
    pub later_turns: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    System,
    User,
    Assistant,
    Other,
}

/// The field names of one conversation format.
struct Format {
    list: &'static str,
    role: &'static str,
    text: &'static str,
    /// Whether a role outside system/user/assistant makes the sample bad.
    strict_roles: bool,
}

const MESSAGES: Format = Format {
    list: "messages",
    role: "role",
    text: "content",
    strict_roles: false,
};

const SHAREGPT: Format = Format {
    list: "conversations",
    role: "from",
    text: "value",
    strict_roles: true,
};

fn role(name: &str) -> Role {
    match name {
        "system" => Role::System,
        "user" | "human" => Role::User,
        "assistant" | "gpt" => Role::Assistant,
        _ => Role::Other,
    }
}

/// LongAlign `{"messages": [{"role", "content"}, ...]}`.
pub fn messages(obj: &Map<String, Value>) -> Result<Conversation, String> {
    parse(obj, &MESSAGES)
}

/// ShareGPT `{"conversations": [{"from", "value"}, ...]}`.
pub fn sharegpt(obj: &Map<String, Value>) -> Result<Conversation, String> {
    parse(obj, &SHAREGPT)
}

fn parse(obj: &Map<String, Value>, f: &Format) -> Result<Conversation, String> {
    let turns = obj.get(f.list).and_then(Value::as_array).ok_or_else(|| {
        format!(
            "field {:?} must be an array of {{{}, {}}} objects",
            f.list, f.role, f.text
        )
    })?;
    let mut roles = Vec::with_capacity(turns.len());
    for (i, t) in turns.iter().enumerate() {
        let name = t.get(f.role).and_then(Value::as_str);
        let r = name.map_or(Role::Other, role);
        if f.strict_roles && r == Role::Other {
            let shown = match name {
                Some(n) => n.to_string(),
                None => t.get(f.role).map_or("(none)".into(), Value::to_string),
            };
            return Err(format!("unknown role {shown} ({}[{i}].{})", f.list, f.role));
        }
        roles.push(r);
    }
    let text = |i: usize| -> Result<String, String> {
        match turns[i].get(f.text) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "{}[{i}].{} must be a string, found {}",
                f.list,
                f.text,
                super::hints::kind(other)
            )),
            None => Err(format!("{}[{i}] has no {:?}", f.list, f.text)),
        }
    };
    let u = roles
        .iter()
        .position(|&r| r == Role::User)
        .ok_or_else(|| format!("no user turn in {:?}", f.list))?;
    let a = (u + 1..turns.len())
        .find(|&i| roles[i] == Role::Assistant)
        .ok_or("no assistant turn after the first user turn")?;
    let system = match roles[..u].iter().position(|&r| r == Role::System) {
        Some(i) => Some(text(i)?),
        None => None,
    };
    Ok(Conversation {
        system,
        user: text(u)?,
        assistant: text(a)?,
        later_turns: turns.len() - a - 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn sharegpt_roles_system_and_later_turns() {
        let c = sharegpt(&obj(json!({"conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "doc\n\nQ?"},
            {"from": "gpt", "value": "A."},
            {"from": "human", "value": "more?"},
            {"from": "gpt", "value": "no."}
        ]})))
        .unwrap();
        assert_eq!(c.system.as_deref(), Some("Be brief."));
        assert_eq!((c.user.as_str(), c.assistant.as_str()), ("doc\n\nQ?", "A."));
        assert_eq!(c.later_turns, 2);
        let c = sharegpt(&obj(json!({"conversations": [
            {"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}
        ]})))
        .unwrap();
        assert_eq!((c.system, c.later_turns), (None, 0));
    }

    #[test]
    fn sharegpt_unknown_role_is_named() {
        let e = sharegpt(&obj(json!({"conversations": [
            {"from": "human", "value": "Q"}, {"from": "tool", "value": "x"},
            {"from": "gpt", "value": "A"}
        ]})))
        .unwrap_err();
        assert_eq!(e, "unknown role tool (conversations[1].from)");
    }

    #[test]
    fn messages_keep_ignoring_other_roles() {
        let c = messages(&obj(json!({"messages": [
            {"role": "tool", "content": "x"}, {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"}
        ]})))
        .unwrap();
        assert_eq!(c.user, "Q");
    }
}
