//! The read API for the shop's app, on the admin listener: the mirror as JSON.
//!
//! `GET /api/objects/{id}` returns one object; `GET /api/objects?type=subscription&customer=cus_..`
//! lists objects with filters (`type`, `customer`, `email`, `status`, `metadata[key]=value`,
//! `deleted=true|false`) in id order, `limit` (1-100, default 25) and `starting_after=<id>` for the
//! next page, answered in Stripe's list shape `{"object":"list","data":[..],"has_more":..}`.
//!
//! Guarded by a bearer token read from the environment variable `[api] token_env` names; with no
//! token configured the API is off and every `/api/` path answers 404. The token is compared in
//! constant time and never logged; the scheme `Bearer` is matched in any case (RFC 9110 §11.1).
//! Every answer carries `X-Content-Type-Options: nosniff` and `Cache-Control: no-store` (it is
//! private data). Reads go through the `query_only` pool only.
//!
//! A `metadata[KEY]` filter becomes a JSON path; a key that a path cannot hold exactly (empty,
//! over 40 characters as Stripe limits keys, or with `"`, `\`, `[`, `]` or a control character)
//! is a 400, never a query that fails.

use rusqlite::types::Value as SqlValue;
use serde_json::{json, Value};

use crate::admin::form::{decode_path, Form};
use crate::crypto;
use crate::http::{Request, Response};
use crate::store::ReadPool;

/// The most objects one list call returns.
const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 25;
/// Stripe's limit on a metadata key's length.
const MAX_METADATA_KEY: usize = 40;

/// The API's state: the pool and the token (None: the API is off).
pub struct Api {
    pub pool: ReadPool,
    pub token: Option<String>,
}

impl Api {
    /// Handles a request whose path starts with `/api/`.
    pub fn handle(&self, req: &Request) -> Response {
        self.answer(req)
            .with_header("X-Content-Type-Options", "nosniff")
            .with_header("Cache-Control", "no-store")
    }

    fn answer(&self, req: &Request) -> Response {
        let Some(token) = &self.token else {
            return Response::json_error(
                404,
                "not found: the read API is off (set [api] token_env)",
            );
        };
        let given = req.bearer().unwrap_or("");
        if !crypto::ct_eq(given.as_bytes(), token.as_bytes()) {
            return Response::json_error(401, "unauthorized: send Authorization: Bearer <token>")
                .with_header("WWW-Authenticate", "Bearer")
                .with_log("api=unauthorized");
        }
        if req.method != "GET" {
            return Response::json_error(405, "method not allowed").with_header("Allow", "GET");
        }
        let result = match req.path.strip_prefix("/api/objects") {
            Some("") | Some("/") => self.list(&req.query),
            Some(rest) if rest.starts_with('/') && rest.len() > 1 => {
                self.one(&decode_path(&rest[1..]))
            }
            _ => return Response::json_error(404, "not found"),
        };
        match result {
            Ok(response) => response,
            Err(ApiError::BadRequest(msg)) => Response::json_error(400, &msg),
            Err(ApiError::Internal(msg)) => {
                log::error!("read api: {msg}");
                Response::json_error(500, "internal error")
            }
        }
    }

    fn one(&self, id: &str) -> Result<Response, ApiError> {
        let conn = self
            .pool
            .get()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut stmt = conn
            .prepare_cached(&format!("{SELECT} WHERE id = ?1"))
            .map_err(internal)?;
        let mut rows = stmt.query_map([id], row_to_json).map_err(internal)?;
        match rows.next() {
            Some(row) => Ok(Response::json(200, row.map_err(internal)?.to_string())),
            None => Ok(Response::json_error(404, "no such object in the mirror")),
        }
    }

    fn list(&self, query: &str) -> Result<Response, ApiError> {
        let ListQuery {
            clauses,
            params,
            limit,
        } = parse_list_query(query).map_err(ApiError::BadRequest)?;
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let sql = format!("{SELECT}{filter} ORDER BY id LIMIT {}", limit + 1);
        let conn = self
            .pool
            .get()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut stmt = conn.prepare(&sql).map_err(internal)?;
        let mut data = stmt
            .query_map(rusqlite::params_from_iter(params), row_to_json)
            .map_err(internal)?
            .collect::<rusqlite::Result<Vec<Value>>>()
            .map_err(internal)?;
        let has_more = data.len() > limit;
        data.truncate(limit);
        let body =
            json!({ "object": "list", "url": "/api/objects", "has_more": has_more, "data": data });
        Ok(Response::json(200, body.to_string()))
    }
}

/// The filters and page size of a list call, as SQL: `clauses` joined with AND, numbered
/// parameters `?1..` in `params`.
#[derive(Debug)]
pub struct ListQuery {
    pub clauses: Vec<String>,
    pub params: Vec<SqlValue>,
    pub limit: usize,
}

/// Reads a list call's query string; the error is the 400's message. Pure.
pub fn parse_list_query(query: &str) -> Result<ListQuery, String> {
    let mut clauses = Vec::new();
    let mut params: Vec<SqlValue> = Vec::new();
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in Form::parse(query).0 {
        let mut add = |clause: &str, value: String| {
            params.push(SqlValue::Text(value));
            clauses.push(clause.replace('?', &format!("?{}", params.len())));
        };
        match key.as_str() {
            "type" => add("type = ?", value),
            "customer" => add("customer = ?", value),
            "email" => add("email = lower(?)", value),
            "status" => add("json_extract(data, '$.status') = ?", value),
            "starting_after" => add("id > ?", value),
            "deleted" => match value.as_str() {
                "true" => clauses.push("deleted = 1".into()),
                "false" => clauses.push("deleted = 0".into()),
                _ => return Err("deleted must be true or false".into()),
            },
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be 1 to {MAX_LIMIT}"))?;
            }
            k if k.starts_with("metadata[") && k.ends_with(']') => {
                let name = metadata_key(&k["metadata[".len()..k.len() - 1])?;
                params.push(SqlValue::Text(format!("$.metadata.\"{name}\"")));
                let n = params.len();
                params.push(SqlValue::Text(value));
                clauses.push(format!("json_extract(data, ?{n}) = ?{}", n + 1));
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(ListQuery {
        clauses,
        params,
        limit,
    })
}

/// A metadata key that a quoted JSON path label holds exactly, or the 400's message.
fn metadata_key(key: &str) -> Result<&str, String> {
    let fits = !key.is_empty()
        && key.chars().count() <= MAX_METADATA_KEY
        && !key
            .chars()
            .any(|c| matches!(c, '"' | '\\' | '[' | ']') || c.is_control());
    if fits {
        Ok(key)
    } else {
        Err(format!(
            "metadata[KEY]: the key must be 1 to {MAX_METADATA_KEY} characters without quotes, backslashes, brackets or control characters"
        ))
    }
}

const SELECT: &str = "SELECT id, type, account, livemode, deleted, uncertain, event_id, first_seen, updated_at, data FROM objects";

fn row_to_json(row: &rusqlite::Row) -> rusqlite::Result<Value> {
    let data: String = row.get(9)?;
    Ok(json!({
        "id": row.get::<_, String>(0)?,
        "type": row.get::<_, String>(1)?,
        "account": row.get::<_, Option<String>>(2)?,
        "livemode": row.get::<_, Option<bool>>(3)?,
        "deleted": row.get::<_, bool>(4)?,
        "uncertain": row.get::<_, bool>(5)?,
        "event_id": row.get::<_, Option<String>>(6)?,
        "first_seen_ms": row.get::<_, i64>(7)?,
        "updated_at_ms": row.get::<_, i64>(8)?,
        "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::String(data)),
    }))
}

enum ApiError {
    BadRequest(String),
    Internal(String),
}

fn internal(e: rusqlite::Error) -> ApiError {
    ApiError::Internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, case 6: `metadata[\]=x` reached SQLite as a bad JSON path (500).
    #[test]
    fn metadata_keys_a_path_cannot_hold_are_refused() {
        for bad in [
            "metadata[\\]=x",
            "metadata[]=x",
            "metadata[a\"b]=x",
            "metadata[a%5Bb]=x",
            "metadata[%00]=x",
            &format!("metadata[{}]=x", "k".repeat(41)),
        ] {
            let err = parse_list_query(bad).unwrap_err();
            assert!(err.contains("metadata[KEY]"), "{bad}: {err}");
        }
        let ok = parse_list_query("metadata[cart_id]=c_1&metadata[a.b-c d]=2&limit=5").unwrap();
        assert_eq!(ok.limit, 5);
        assert_eq!(ok.clauses.len(), 2);
        assert_eq!(
            ok.params[0],
            SqlValue::Text("$.metadata.\"cart_id\"".into())
        );
        assert_eq!(
            ok.params[2],
            SqlValue::Text("$.metadata.\"a.b-c d\"".into())
        );
    }

    #[test]
    fn query_parsing() {
        assert_eq!(
            Form::parse("type=subscription&metadata%5Bcart_id%5D=c+1&customer=cus_%41").0,
            vec![
                ("type".to_string(), "subscription".to_string()),
                ("metadata[cart_id]".to_string(), "c 1".to_string()),
                ("customer".to_string(), "cus_A".to_string()),
            ]
        );
    }
}
