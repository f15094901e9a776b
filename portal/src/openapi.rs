//! An OpenAPI document (3.0, 3.1 or Swagger 2.0, as JSON values) turned into what the API
//! page shows: operations by tag with their parameters, request bodies, responses, schemas
//! and examples. Pure; every walk is bounded (schema depth, nodes per schema, operations),
//! and `$ref` cycles end in a marker, so a hostile spec renders fast and harmlessly. Text is
//! untrusted: descriptions go through [`crate::markdown::render`], everything else is
//! escaped by the templates.

use serde_json::Value;

/// Operations shown at most.
const MAX_OPERATIONS: usize = 2000;
/// Depth of a schema sketch.
const MAX_DEPTH: usize = 8;
/// Lines of one schema sketch.
const MAX_LINES: usize = 400;
/// Characters of one sketch line.
const MAX_LINE: usize = 300;
/// Bytes of one example.
const MAX_EXAMPLE: usize = 16 * 1024;
/// Bytes of the whole page's text: past it, operations are left out (a spec that repeats
/// a big `$ref` thousands of times renders as much as it can, never everything).
const MAX_DOC_BYTES: usize = 4 << 20;

/// The page's view of a document.
#[derive(Debug, Default)]
pub struct Doc {
    /// `info.title`.
    pub title: String,
    /// `info.version`.
    pub version: String,
    /// `info.description`, as safe HTML.
    pub description_html: String,
    /// Server URLs (the API's override servers when it has some).
    pub servers: Vec<String>,
    /// Operations by tag, in the document's tag order, untagged last.
    pub tags: Vec<TagOps>,
    /// Operations left out because there were too many.
    pub truncated: usize,
}

/// A tag and its operations.
#[derive(Debug)]
pub struct TagOps {
    /// Name.
    pub name: String,
    /// Description, as safe HTML.
    pub description_html: String,
    /// Operations.
    pub operations: Vec<Operation>,
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Upper-case method.
    pub method: String,
    /// Path template.
    pub path: String,
    /// An id for links and forms.
    pub anchor: String,
    /// Summary.
    pub summary: String,
    /// Description, as safe HTML.
    pub description_html: String,
    /// Deprecated.
    pub deprecated: bool,
    /// Parameters (path, query, header, cookie).
    pub parameters: Vec<Parameter>,
    /// The request body.
    pub body: Option<BodyDoc>,
    /// Responses, by code.
    pub responses: Vec<Response>,
}

/// A parameter.
#[derive(Debug, Clone)]
pub struct Parameter {
    /// Name.
    pub name: String,
    /// `path`, `query`, `header` or `cookie`.
    pub location: String,
    /// Required.
    pub required: bool,
    /// Its type, in short.
    pub kind: String,
    /// Description, as safe HTML.
    pub description_html: String,
    /// An example value.
    pub example: String,
}

/// A request body.
#[derive(Debug, Clone)]
pub struct BodyDoc {
    /// Media type.
    pub content_type: String,
    /// Required.
    pub required: bool,
    /// The schema, sketched.
    pub schema: String,
    /// An example (the document's, or one made from the schema).
    pub example: String,
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code (or `default`).
    pub code: String,
    /// Description, as safe HTML.
    pub description_html: String,
    /// The schema, sketched (empty: none).
    pub schema: String,
}

impl Operation {
    /// Roughly how many bytes of text it holds.
    fn size(&self) -> usize {
        let params: usize = self
            .parameters
            .iter()
            .map(|p| p.name.len() + p.kind.len() + p.description_html.len() + p.example.len())
            .sum();
        let body = self.body.as_ref().map_or(0, |b| b.schema.len() + b.example.len());
        let responses: usize =
            self.responses.iter().map(|r| r.code.len() + r.description_html.len() + r.schema.len()).sum();
        self.path.len() + self.summary.len() + self.description_html.len() + params + body + responses
    }
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The view of `doc`; `servers` replaces the document's when not empty; `shown(method,
/// path)` says which operations the user may see (an operation filter).
pub fn read(doc: &Value, servers: &[String], shown: impl Fn(&str, &str) -> bool) -> Doc {
    let swagger2 = doc.get("swagger").and_then(Value::as_str).is_some_and(|v| v.starts_with('2'));
    let info = doc.get("info");
    let text = |v: Option<&Value>, k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out = Doc {
        title: text(info, "title"),
        version: text(info, "version"),
        description_html: crate::markdown::render(&text(info, "description")),
        servers: if !servers.is_empty() { servers.to_vec() } else { doc_servers(doc, swagger2) },
        ..Doc::default()
    };
    let mut tags: Vec<TagOps> = doc
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(TagOps {
                name: t.get("name")?.as_str()?.to_string(),
                description_html: crate::markdown::render(t.get("description").and_then(Value::as_str).unwrap_or("")),
                operations: Vec::new(),
            })
        })
        .collect();
    let mut untagged = Vec::new();
    let mut count = 0usize;
    let mut used = out.description_html.len();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else { return Doc { tags, ..out } };
    for (path, item) in paths {
        let Some(item) = item.as_object() else { continue };
        let shared: Vec<&Value> =
            item.get("parameters").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
        for m in METHODS {
            let Some(op) = item.get(m).filter(|o| o.is_object()) else { continue };
            if !shown(&m.to_ascii_uppercase(), path) {
                continue;
            }
            count += 1;
            if count > MAX_OPERATIONS || used > MAX_DOC_BYTES {
                out.truncated += 1;
                continue;
            }
            let o = operation(doc, swagger2, m, path, op, &shared, count);
            used += o.size();
            let tag = op.get("tags").and_then(Value::as_array).and_then(|t| t.first()).and_then(Value::as_str);
            match tag {
                Some(t) => match tags.iter_mut().find(|x| x.name == t) {
                    Some(x) => x.operations.push(o),
                    None => {
                        tags.push(TagOps { name: t.to_string(), description_html: String::new(), operations: vec![o] })
                    }
                },
                None => untagged.push(o),
            }
        }
    }
    tags.retain(|t| !t.operations.is_empty());
    if !untagged.is_empty() {
        tags.push(TagOps { name: "Operations".into(), description_html: String::new(), operations: untagged });
    }
    out.tags = tags;
    out
}

fn doc_servers(doc: &Value, swagger2: bool) -> Vec<String> {
    if swagger2 {
        let host = doc.get("host").and_then(Value::as_str).unwrap_or("");
        let base = doc.get("basePath").and_then(Value::as_str).unwrap_or("");
        let schemes: Vec<&str> = doc
            .get("schemes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if host.is_empty() {
            return if base.is_empty() { vec![] } else { vec![base.to_string()] };
        }
        let scheme = schemes.iter().find(|s| **s == "https").or(schemes.first()).unwrap_or(&"https");
        return vec![format!("{scheme}://{host}{base}")];
    }
    doc.get("servers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("url").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn operation(doc: &Value, swagger2: bool, m: &str, path: &str, op: &Value, shared: &[&Value], n: usize) -> Operation {
    let s = |k: &str| op.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut parameters: Vec<Parameter> = Vec::new();
    let mut body = None;
    let own: Vec<&Value> =
        op.get("parameters").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    // Operation parameters override path-level ones of the same name and location.
    for p in own.iter().chain(shared.iter()) {
        let p = resolve(doc, p, &mut Vec::new());
        let name = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let location = p.get("in").and_then(Value::as_str).unwrap_or("").to_string();
        if parameters.iter().any(|x| x.name == name && x.location == location) {
            continue;
        }
        if swagger2 && location == "body" {
            if body.is_none() {
                let schema = p.get("schema").cloned().unwrap_or(Value::Null);
                body = Some(BodyDoc {
                    content_type: op
                        .get("consumes")
                        .or_else(|| doc.get("consumes"))
                        .and_then(Value::as_array)
                        .and_then(|a| a.first())
                        .and_then(Value::as_str)
                        .unwrap_or("application/json")
                        .to_string(),
                    required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                    schema: sketch(doc, &schema),
                    example: example_of(doc, &schema, None),
                });
            }
            continue;
        }
        if swagger2 && location == "formData" {
            continue;
        }
        let schema = if swagger2 { p.clone() } else { p.get("schema").cloned().unwrap_or(Value::Null) };
        parameters.push(Parameter {
            required: location == "path" || p.get("required").and_then(Value::as_bool).unwrap_or(false),
            kind: short_type(doc, &schema),
            description_html: crate::markdown::render(p.get("description").and_then(Value::as_str).unwrap_or("")),
            example: scalar_text(p.get("example").or_else(|| schema.get("example")).or_else(|| schema.get("default"))),
            name,
            location,
        });
    }
    if !swagger2 {
        if let Some(rb) = op.get("requestBody") {
            let rb = resolve(doc, rb, &mut Vec::new());
            if let Some((ct, media)) = rb
                .get("content")
                .and_then(Value::as_object)
                .and_then(|c| c.iter().find(|(k, _)| k.contains("json")).or_else(|| c.iter().next()))
            {
                let schema = media.get("schema").cloned().unwrap_or(Value::Null);
                let given = media.get("example").or_else(|| {
                    media
                        .get("examples")
                        .and_then(Value::as_object)
                        .and_then(|e| e.values().next())
                        .and_then(|e| e.get("value"))
                });
                body = Some(BodyDoc {
                    content_type: ct.clone(),
                    required: rb.get("required").and_then(Value::as_bool).unwrap_or(false),
                    schema: sketch(doc, &schema),
                    example: example_of(doc, &schema, given),
                });
            }
        }
    }
    let responses = op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .take(50)
        .map(|(code, r)| {
            let r = resolve(doc, r, &mut Vec::new());
            let schema = if swagger2 {
                r.get("schema").cloned()
            } else {
                r.get("content")
                    .and_then(Value::as_object)
                    .and_then(|c| c.iter().find(|(k, _)| k.contains("json")).or_else(|| c.iter().next()))
                    .and_then(|(_, m)| m.get("schema").cloned())
            };
            Response {
                code: code.clone(),
                description_html: crate::markdown::render(r.get("description").and_then(Value::as_str).unwrap_or("")),
                schema: schema.map(|s| sketch(doc, &s)).unwrap_or_default(),
            }
        })
        .collect();
    Operation {
        method: m.to_ascii_uppercase(),
        path: path.to_string(),
        anchor: format!("op-{n}"),
        summary: s("summary"),
        description_html: crate::markdown::render(&s("description")),
        deprecated: op.get("deprecated").and_then(Value::as_bool).unwrap_or(false),
        parameters,
        body,
        responses,
    }
}

/// `v`, or what its local `$ref` points to (`#/components/...`, `#/definitions/...`),
/// followed at most 16 times; `seen` holds the refs on the way (a cycle ends it).
fn resolve<'a>(doc: &'a Value, v: &'a Value, seen: &mut Vec<String>) -> &'a Value {
    let mut cur = v;
    for _ in 0..16 {
        let Some(r) = cur.get("$ref").and_then(Value::as_str) else { return cur };
        if seen.iter().any(|s| s == r) {
            return cur;
        }
        seen.push(r.to_string());
        match r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
            Some(t) => cur = t,
            None => return cur,
        }
    }
    cur
}

fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref").and_then(Value::as_str).map(|r| r.rsplit('/').next().unwrap_or(r))
}

/// A type in a few characters: `string (uuid)`, `array of Customer`, `integer`.
fn short_type(doc: &Value, schema: &Value) -> String {
    if let Some(n) = ref_name(schema) {
        let target = resolve(doc, schema, &mut Vec::new());
        return match target.get("type").and_then(Value::as_str) {
            Some(t) if t != "object" => format!("{t} ({n})"),
            _ => n.to_string(),
        };
    }
    let t = type_name(schema);
    match (t.as_str(), schema.get("items")) {
        ("array", Some(items)) => format!("array of {}", short_type(doc, items)),
        _ => match schema.get("format").and_then(Value::as_str) {
            Some(f) => format!("{t} ({f})"),
            None => t,
        },
    }
}

fn type_name(schema: &Value) -> String {
    match schema.get("type") {
        Some(Value::String(s)) => s.clone(),
        // 3.1: a list of types (`["string", "null"]`).
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "),
        _ if schema.get("properties").is_some() => "object".into(),
        _ if schema.get("enum").is_some() => "enum".into(),
        _ => "any".into(),
    }
}

fn scalar_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A schema as indented lines (`name: type  *required*`), bounded in depth and lines;
/// a `$ref` already being expanded prints as `↻ Name`.
pub fn sketch(doc: &Value, schema: &Value) -> String {
    let mut lines = Vec::new();
    sketch_into(doc, schema, 0, &mut Vec::new(), &mut lines, "");
    for l in &mut lines {
        if l.len() > MAX_LINE {
            *l = format!("{}…", crate::markdown::truncate(l, MAX_LINE));
        }
    }
    if lines.len() >= MAX_LINES {
        lines.truncate(MAX_LINES);
        lines.push("…".into());
    }
    lines.join("\n")
}

fn sketch_into(doc: &Value, schema: &Value, depth: usize, stack: &mut Vec<String>, out: &mut Vec<String>, label: &str) {
    if out.len() >= MAX_LINES {
        return;
    }
    let pad = "  ".repeat(depth);
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = ref_name(schema).unwrap_or(r).to_string();
        if stack.iter().any(|s| s == r) || depth >= MAX_DEPTH {
            out.push(format!("{pad}{label}↻ {name}"));
            return;
        }
        stack.push(r.to_string());
        let target = resolve(doc, schema, &mut Vec::new());
        if target.get("$ref").is_some() {
            out.push(format!("{pad}{label}{name}"));
        } else {
            sketch_into(doc, target, depth, stack, out, label);
        }
        stack.pop();
        return;
    }
    if depth >= MAX_DEPTH {
        out.push(format!("{pad}{label}…"));
        return;
    }
    for combo in ["allOf", "oneOf", "anyOf"] {
        if let Some(list) = schema.get(combo).and_then(Value::as_array) {
            out.push(format!("{pad}{label}{combo}:"));
            for s in list.iter().take(20) {
                sketch_into(doc, s, depth + 1, stack, out, "- ");
            }
            return;
        }
    }
    let t = type_name(schema);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        out.push(format!("{pad}{label}object"));
        for (name, p) in props.iter().take(200) {
            let req = if required.contains(&name.as_str()) { " (required)" } else { "" };
            let simple = p.get("$ref").is_none()
                && p.get("properties").is_none()
                && p.get("items").is_none()
                && ["allOf", "oneOf", "anyOf"].iter().all(|c| p.get(*c).is_none());
            if simple {
                out.push(format!("{pad}  {name}: {}{req}", short_type(doc, p)));
            } else {
                sketch_into(doc, p, depth + 1, stack, out, &format!("{name}{req}: "));
            }
            if out.len() >= MAX_LINES {
                return;
            }
        }
        return;
    }
    if t == "array" {
        if let Some(items) = schema.get("items") {
            sketch_into(doc, items, depth, stack, out, &format!("{label}array of "));
            return;
        }
    }
    let mut line = format!("{pad}{label}{}", short_type(doc, schema));
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e.iter().take(20).map(|v| scalar_text(Some(v))).collect();
        line.push_str(&format!(" [{}]", vals.join(", ")));
    }
    out.push(line);
}

/// An example body: `given`, else the schema's `example`, else one made from the schema
/// (bounded); pretty JSON.
fn example_of(doc: &Value, schema: &Value, given: Option<&Value>) -> String {
    let v = match given.or_else(|| schema.get("example")) {
        Some(v) => v.clone(),
        None => {
            let mut budget = 500;
            make_example(doc, schema, 0, &mut Vec::new(), &mut budget)
        }
    };
    if v.is_null() {
        return String::new();
    }
    let text = serde_json::to_string_pretty(&v).unwrap_or_default();
    if text.len() > MAX_EXAMPLE {
        return format!("{}\n…", crate::markdown::truncate(&text, MAX_EXAMPLE));
    }
    text
}

fn make_example(doc: &Value, schema: &Value, depth: usize, stack: &mut Vec<String>, budget: &mut usize) -> Value {
    if *budget == 0 || depth > MAX_DEPTH {
        return Value::Null;
    }
    *budget -= 1;
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        if stack.iter().any(|s| s == r) {
            return Value::Null;
        }
        stack.push(r.to_string());
        let target = resolve(doc, schema, &mut Vec::new());
        let v =
            if target.get("$ref").is_some() { Value::Null } else { make_example(doc, target, depth, stack, budget) };
        stack.pop();
        return v;
    }
    if let Some(e) = schema.get("example").or_else(|| schema.get("default")) {
        return e.clone();
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|a| a.first()) {
        return first.clone();
    }
    if let Some(list) = schema.get("allOf").and_then(Value::as_array) {
        let mut obj = serde_json::Map::new();
        for s in list.iter().take(20) {
            if let Value::Object(m) = make_example(doc, s, depth + 1, stack, budget) {
                obj.extend(m);
            }
        }
        return Value::Object(obj);
    }
    for c in ["oneOf", "anyOf"] {
        if let Some(first) = schema.get(c).and_then(Value::as_array).and_then(|a| a.first()) {
            return make_example(doc, first, depth + 1, stack, budget);
        }
    }
    let t = type_name(schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let mut obj = serde_json::Map::new();
        for (k, p) in props.iter().take(50) {
            obj.insert(k.clone(), make_example(doc, p, depth + 1, stack, budget));
        }
        return Value::Object(obj);
    }
    match t.split(" | ").next().unwrap_or("") {
        "array" => match schema.get("items") {
            Some(i) => Value::Array(vec![make_example(doc, i, depth + 1, stack, budget)]),
            None => Value::Array(vec![]),
        },
        "string" => Value::String(match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => "2026-01-01T00:00:00Z".into(),
            Some("date") => "2026-01-01".into(),
            Some("email") => "user@example.com".into(),
            Some("uuid") => "00000000-0000-0000-0000-000000000000".into(),
            _ => "string".into(),
        }),
        "integer" => Value::from(0),
        "number" => Value::from(0.0),
        "boolean" => Value::Bool(false),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crm() -> Value {
        json!({
            "openapi": "3.0.3",
            "info": {"title": "CRM", "version": "1.2", "description": "Customers <script>x</script>"},
            "servers": [{"url": "https://spec.example/crm"}],
            "tags": [{"name": "employees", "description": "People"}],
            "paths": {
                "/employees/{id}": {
                    "parameters": [{"name": "id", "in": "path", "schema": {"type": "string", "format": "uuid"}}],
                    "get": {"tags": ["employees"], "summary": "One employee",
                        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Employee"}}}}}},
                    "put": {"tags": ["employees"], "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Employee"}}}},
                        "responses": {"204": {"description": "done"}}}
                },
                "/health": {"get": {"responses": {"200": {"description": "up"}}}}
            },
            "components": {"schemas": {"Employee": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "manager": {"$ref": "#/components/schemas/Employee"},
                "reports": {"type": "array", "items": {"$ref": "#/components/schemas/Employee"}}}}}}
        })
    }

    #[test]
    fn operations_by_tag_with_parameters_bodies_and_cyclic_schemas() {
        let d = read(&crm(), &["https://api.example.com/crm".into()], |_, _| true);
        assert_eq!(d.servers, ["https://api.example.com/crm"]);
        assert!(!d.description_html.contains("<script"), "{}", d.description_html);
        assert_eq!(d.tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["employees", "Operations"]);
        let get = &d.tags[0].operations[0];
        assert_eq!((get.method.as_str(), get.path.as_str()), ("GET", "/employees/{id}"));
        assert_eq!(get.parameters[0].kind, "string (uuid)");
        assert!(get.parameters[0].required, "path parameters are required");
        let schema = &get.responses[0].schema;
        assert!(schema.contains("name: string (required)"), "{schema}");
        assert!(schema.contains("↻ Employee"), "the cycle ends: {schema}");
        let put = &d.tags[0].operations[1];
        let body = put.body.as_ref().unwrap();
        assert!(body.required && body.content_type == "application/json");
        let ex: Value = serde_json::from_str(&body.example).unwrap();
        assert_eq!(ex["name"], "string");
    }

    #[test]
    fn the_filter_hides_operations() {
        let d = read(&crm(), &[], |m, p| m == "GET" && p == "/health");
        assert_eq!(d.servers, ["https://spec.example/crm"]);
        assert_eq!(d.tags.len(), 1);
        assert_eq!(d.tags[0].operations.len(), 1);
        assert_eq!(d.tags[0].operations[0].path, "/health");
    }

    #[test]
    fn swagger2_bodies_and_servers() {
        let doc = json!({"swagger": "2.0", "info": {"title": "B", "version": "1"}, "host": "api.example.com", "basePath": "/billing",
            "schemes": ["http", "https"], "paths": {"/invoices": {"post": {"parameters": [
                {"name": "inv", "in": "body", "required": true, "schema": {"$ref": "#/definitions/Invoice"}},
                {"name": "dry", "in": "query", "type": "boolean"}],
                "responses": {"201": {"description": "made", "schema": {"$ref": "#/definitions/Invoice"}}}}}},
            "definitions": {"Invoice": {"type": "object", "properties": {"amount": {"type": "number", "example": 12.5}}}}});
        let d = read(&doc, &[], |_, _| true);
        assert_eq!(d.servers, ["https://api.example.com/billing"]);
        let op = &d.tags[0].operations[0];
        assert_eq!(op.parameters.len(), 1);
        assert_eq!(op.parameters[0].kind, "boolean");
        assert!(op.body.as_ref().unwrap().example.contains("12.5"));
        assert!(op.responses[0].schema.contains("amount: number"));
    }

    #[test]
    fn a_big_example_repeated_by_ref_stays_within_the_budget() {
        let big = "x".repeat(1 << 20);
        let mut paths = serde_json::Map::new();
        for i in 0..2000 {
            paths.insert(
                format!("/p{i}"),
                json!({"post": {"requestBody": {"$ref": "#/components/requestBodies/B"},
                                "responses": {"200": {"$ref": "#/components/responses/R"}}}}),
            );
        }
        let doc = json!({"openapi": "3.0.0", "info": {"title": "t", "version": "1"}, "paths": paths,
            "components": {"requestBodies": {"B": {"content": {"application/json": {"schema": {"type": "string"}, "example": big}}}},
                           "responses": {"R": {"description": big}}}});
        let t = std::time::Instant::now();
        let d = read(&doc, &[], |_, _| true);
        let total: usize = d.tags.iter().flat_map(|t| &t.operations).map(Operation::size).sum();
        assert!(total < MAX_DOC_BYTES + 2 * (1 << 20) + MAX_EXAMPLE, "{total}");
        assert!(d.truncated > 1900, "most operations are left out: {}", d.truncated);
        assert!(t.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn deep_and_self_referencing_refs_end_quickly() {
        // A ref to itself, a two-step cycle, and a very deep nest.
        let mut deep = json!({"type": "string"});
        for _ in 0..500 {
            deep = json!({"type": "object", "properties": {"x": deep}});
        }
        let doc = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/a": {"post": {
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/A"}}}},
            "responses": {"200": {"description": "d", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Self"}}}},
                          "201": {"description": "d", "content": {"application/json": {"schema": deep}}}}}}},
            "components": {"schemas": {"A": {"$ref": "#/components/schemas/B"}, "B": {"$ref": "#/components/schemas/A"},
                "Self": {"$ref": "#/components/schemas/Self"}}}});
        let t = std::time::Instant::now();
        let d = read(&doc, &[], |_, _| true);
        let op = &d.tags[0].operations[0];
        assert!(op.responses.iter().all(|r| r.schema.lines().count() <= MAX_LINES + 1));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
