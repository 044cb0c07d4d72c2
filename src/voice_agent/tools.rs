//! The agent's tools (README "The voice agent"): their declarations for the
//! session and what a call to each one means. Carrying them out (MySQL,
//! ARI) is the call's job; this file only names and describes them.

use serde_json::{json, Value};

pub const PROMISE: &str = "registrar_promesa_de_pago";
pub const TRANSFER: &str = "transferir_a_asesor";
pub const HANG_UP: &str = "finalizar_llamada";

/// What a tool call asks of the call.
#[derive(Debug, Clone, PartialEq)]
pub enum Tool {
    Promise {
        arguments: String,
    },
    Transfer,
    HangUp,
    /// A name the session never declared (a model bug): refused back.
    Unknown(String),
}

impl Tool {
    pub fn from_call(name: &str, arguments: &str) -> Tool {
        match name {
            PROMISE => Tool::Promise {
                arguments: arguments.to_owned(),
            },
            TRANSFER => Tool::Transfer,
            HANG_UP => Tool::HangUp,
            other => Tool::Unknown(other.to_owned()),
        }
    }
}

/// The tools a session declares. The transfer is offered only when
/// `[transfer]` is configured; the promise only when the caller is a
/// known client (there is no account to promise against otherwise).
pub fn declarations(can_transfer: bool, known_client: bool) -> Vec<Value> {
    let mut tools = Vec::new();
    if known_client {
        tools.push(json!({
            "type": "function",
            "name": PROMISE,
            "description": "Registra una promesa de pago del cliente: la fecha en que pagará (AAAA-MM-DD, desde hoy y hasta 60 días) y, si la dice, el monto en pesos.",
            "parameters": {
                "type": "object",
                "properties": {
                    "fecha": {"type": "string", "description": "Fecha prometida, AAAA-MM-DD"},
                    "monto": {"type": "number", "description": "Monto en pesos colombianos (opcional)"}
                },
                "required": ["fecha"]
            }
        }));
    }
    if can_transfer {
        tools.push(json!({
            "type": "function",
            "name": TRANSFER,
            "description": "Transfiere la llamada a un asesor humano. Úsala cuando la persona pida hablar con alguien o no puedas ayudarla; antes dile que la vas a transferir.",
            "parameters": {"type": "object", "properties": {}}
        }));
    }
    tools.push(json!({
        "type": "function",
        "name": HANG_UP,
        "description": "Termina la llamada. Úsala solo después de despedirte.",
        "parameters": {"type": "object", "properties": {}}
    }));
    tools
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_offered_follow_what_the_call_can_do() {
        let names = |t: Vec<Value>| -> Vec<String> {
            t.iter()
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            names(declarations(true, true)),
            [PROMISE, TRANSFER, HANG_UP]
        );
        assert_eq!(names(declarations(false, true)), [PROMISE, HANG_UP]);
        assert_eq!(names(declarations(false, false)), [HANG_UP]);
        assert_eq!(
            Tool::from_call("borrar_deuda", "{}"),
            Tool::Unknown("borrar_deuda".into())
        );
    }
}
