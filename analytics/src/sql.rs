//! The SQL-like rule language, in the spirit of StreamBase and eKuiper:
//!
//! ```sql
//! SELECT device, avg(temperature) AS t
//! FROM telemetry
//! WHERE site = 'plant-1' AND value > -40
//! GROUP BY device, TUMBLING(INTERVAL '10' SECOND)
//! HAVING avg(temperature) > 30
//! ```
//!
//! Parsed with `sqlparser`, then checked against what the engine runs:
//! columns are metrics (`avg(temperature)`), `WHERE` filters on `device`,
//! `site`, `building`, `line`, `path` (`=`, `<>`, `LIKE`, `IN`, `OR` within
//! a term), `metric` and the sample `value`; `GROUP BY` takes grouping keys
//! and one window (`TUMBLING`, `HOPPING`, `SLIDING`, `SESSION`, `COUNT`);
//! `HAVING` compares aggregates with `AND`, `OR`, `NOT` and arithmetic.
//! A rule may read several metrics (`avg(temperature) > 30 AND
//! avg(humidity) > 80`) and compare a device with its level of the
//! hierarchy (`avg(t) > site.avg(t) + 10`, in a rule grouped by device);
//! both join windows by range, so they take `TUMBLING` or `HOPPING`.
//! Every error carries the line and column (1-based, within the SQL text)
//! and what was expected there.

use sqlparser::ast::{
    BinaryOperator, DateTimeField, Expr as Ast, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, ObjectName, ObjectNamePart, SelectItem, SetExpr, Spanned, Statement,
    TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::rule::{Arith, Cmp, Expr, Field, MAX_RULE_METRICS, Match, Scope, SeriesFilter, Term};
use crate::{Aggregate, DeviceLevel, GroupBy, GroupingWord, WindowKind};

/// A rule's query part, as the engine runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub window: WindowKind,
    pub group_by: GroupBy,
    /// The metrics the aggregates name, in order of first use (terms
    /// index them).
    pub metrics: Vec<String>,
    pub filter: SeriesFilter,
    /// The `HAVING` condition.
    pub condition: Expr,
    /// The value an alert reports: the first aggregate selected.
    pub value: Expr,
}

/// What is wrong with a rule's SQL, and where (1-based, in the SQL text;
/// line 0 when the position is unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SqlError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Longest rule text (query or condition), in bytes.
pub const MAX_RULE_BYTES: usize = 8192;
/// Most operators (`AND`, `OR`, `NOT`, comparisons, arithmetic) in one
/// rule text: with the nesting limit, this bounds the depth of the
/// expression trees the engine evaluates recursively.
pub const MAX_RULE_OPERATORS: usize = 256;
/// Deepest parenthesis nesting in one rule text.
pub const MAX_RULE_NESTING: usize = 32;

/// Refuses texts over the size, operator and nesting limits before the
/// parser builds a tree of them: every path to a rule (config, rules
/// directory, API, `eddy rules check`) goes through here.
fn check_limits(text: &str) -> Result<(), SqlError> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    if text.len() > MAX_RULE_BYTES {
        return Err(SqlError {
            line: 1,
            column: 1,
            message: format!(
                "rule of {} bytes exceeds the limit of {MAX_RULE_BYTES}",
                text.len()
            ),
        });
    }
    let tokens = Tokenizer::new(&GenericDialect {}, text)
        .tokenize_with_location()
        .map_err(|e| {
            parser_error(
                text,
                sqlparser::parser::ParserError::TokenizerError(e.to_string()),
            )
        })?;
    let (mut operators, mut depth) = (0usize, 0usize);
    for t in &tokens {
        let at = |message: String| SqlError {
            line: t.span.start.line,
            column: t.span.start.column,
            message,
        };
        match &t.token {
            Token::LParen => {
                depth += 1;
                if depth > MAX_RULE_NESTING {
                    return Err(at(format!(
                        "parentheses nested deeper than {MAX_RULE_NESTING}"
                    )));
                }
            }
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR | Keyword::NOT) => {
                operators += 1
            }
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq => operators += 1,
            _ => {}
        }
        if operators > MAX_RULE_OPERATORS {
            return Err(at(format!(
                "more than {MAX_RULE_OPERATORS} operators in one rule; split it into several rules"
            )));
        }
    }
    Ok(())
}

const AGGREGATES: &str = "count, sum, avg, min, max, first, last, stddev, variance, rate, delta, \
                          p50, p90, p99 (or percentile(metric, 0.99))";
const WINDOWS: &str = "TUMBLING(size), HOPPING(size, hop), SLIDING(size), SESSION(gap[, max]) \
                       or COUNT(n[, hop])";

fn err_at(node: &impl Spanned, message: impl Into<String>) -> SqlError {
    let start = node.span().start;
    // sqlparser leaves some nodes without a location (line 0), such as a
    // string used as a table: the query's start then.
    let (line, column) = if start.line == 0 {
        (1, 1)
    } else {
        (start.line, start.column.max(1))
    };
    SqlError {
        line,
        column,
        message: message.into(),
    }
}

/// Parses one rule query.
pub fn parse(sql: &str) -> Result<Query, SqlError> {
    check_limits(sql)?;
    let statements =
        Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| parser_error(sql, e))?;
    let [statement] = statements.as_slice() else {
        return Err(SqlError {
            line: 1,
            column: 1,
            message: format!(
                "expected exactly one SELECT statement, found {}",
                statements.len()
            ),
        });
    };
    let Statement::Query(query) = statement else {
        return Err(err_at(statement, "expected a SELECT statement"));
    };
    if let Some(order) = &query.order_by {
        return Err(err_at(order, "ORDER BY has no meaning in a rule"));
    }
    if query.limit_clause.is_some() {
        return Err(err_at(&**query, "LIMIT has no meaning in a rule"));
    }
    let SetExpr::Select(select) = &*query.body else {
        return Err(err_at(
            &*query.body,
            "expected a plain SELECT ... FROM telemetry",
        ));
    };
    match select.from.as_slice() {
        [t] if t.joins.is_empty() => match &t.relation {
            TableFactor::Table { name, .. } if object_name(name) == "telemetry" => {}
            other => return Err(err_at(other, "expected FROM telemetry")),
        },
        [] => {
            return Err(err_at(&**select, "expected FROM telemetry"));
        }
        [_, second, ..] => return Err(err_at(second, "expected one stream: FROM telemetry")),
        [t] => return Err(err_at(&t.joins[0], "joins are not supported")),
    }
    let mut b = Builder::default();
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => b.select(e, None)?,
            SelectItem::ExprWithAlias { expr, alias } => b.select(expr, Some(alias))?,
            other => return Err(err_at(other, "expected a key or an aggregate")),
        }
    }
    if let Some(w) = &select.selection {
        b.where_clause(w)?;
    }
    let (window, window_at) = match &select.group_by {
        GroupByExpr::Expressions(keys, _) => b.group_by(keys, &**select)?,
        GroupByExpr::All(_) => return Err(err_at(&**select, "GROUP BY ALL is not supported")),
    };
    let Some(having) = &select.having else {
        return Err(err_at(
            &**select,
            "expected HAVING with the alert condition, e.g. HAVING avg(temperature) > 30",
        ));
    };
    let condition = b.condition(having)?;
    if b.metrics.is_empty() {
        return Err(err_at(
            having,
            "no metric named: use an aggregate of one, e.g. avg(temperature)",
        ));
    }
    if let (Some(star), true) = (&b.star, b.metrics.len() > 1) {
        return Err(SqlError {
            message: format!(
                "count(*) is ambiguous in a rule over several metrics ({}): name one, e.g. \
                 count({})",
                b.metrics.join(", "),
                b.metrics[0]
            ),
            ..star.clone()
        });
    }
    let device = b.level.unwrap_or(DeviceLevel::All);
    if let Some(at) = &b.level_term
        && device != DeviceLevel::Device
    {
        return Err(SqlError {
            message: "a comparison with the group (site.avg(...)) needs a rule grouped per \
                      device: GROUP BY device, ..."
                .into(),
            ..at.clone()
        });
    }
    if (b.metrics.len() > 1 || b.level_term.is_some()) && !window.is_aligned() {
        return Err(SqlError {
            message: format!(
                "a rule over several metrics or with a group comparison joins its windows by \
                 range: use TUMBLING or HOPPING, not {}",
                window.name().to_ascii_uppercase()
            ),
            ..window_at
        });
    }
    let value = b
        .value
        .clone()
        .or_else(|| first_aggregate(&condition))
        .unwrap_or(Expr::agg(Aggregate::Count));
    Ok(Query {
        window,
        group_by: GroupBy {
            device,
            metric: true,
        },
        metrics: b.metrics,
        filter: b.filter,
        condition,
        value,
    })
}

/// A condition over the metrics of `query`, e.g. the `clear` condition
/// of a rule with hysteresis: `avg(temperature) < 28`. It names no
/// metric the query does not.
pub fn parse_condition(query: &Query, text: &str) -> Result<Expr, SqlError> {
    check_limits(text)?;
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| parser_error(text, e))?;
    let ast = parser.parse_expr().map_err(|e| parser_error(text, e))?;
    let next = parser.peek_token();
    if next.token != sqlparser::tokenizer::Token::EOF {
        return Err(SqlError {
            line: next.span.start.line,
            column: next.span.start.column,
            message: format!("expected the end of the condition, found {}", next.token),
        });
    }
    let mut b = Builder {
        metrics: query.metrics.clone(),
        fixed: true,
        ..Builder::default()
    };
    let condition = b.condition(&ast)?;
    if let Some(at) = b.level_term {
        if query.group_by.device != DeviceLevel::Device {
            return Err(SqlError {
                message: "a comparison with the group (site.avg(...)) needs a rule grouped per \
                          device"
                    .into(),
                ..at
            });
        }
        if !query.window.is_aligned() {
            return Err(SqlError {
                message: "a group comparison joins windows by range: the query needs TUMBLING \
                          or HOPPING"
                    .into(),
                ..at
            });
        }
    }
    if let (Some(star), true) = (b.star, query.metrics.len() > 1) {
        return Err(SqlError {
            message: "count(*) is ambiguous in a rule over several metrics: name one".into(),
            ..star
        });
    }
    Ok(condition)
}

/// `sqlparser` puts the position at the end of its message; an error at
/// the end of the text has none, and is placed after its last character.
fn parser_error(sql: &str, e: sqlparser::parser::ParserError) -> SqlError {
    let text = match &e {
        sqlparser::parser::ParserError::ParserError(m)
        | sqlparser::parser::ParserError::TokenizerError(m) => m.clone(),
        other => other.to_string(),
    };
    if let Some(i) = text.rfind(" at Line: ") {
        let (message, pos) = text.split_at(i);
        let mut nums = pos
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<u64>().ok());
        if let (Some(line), Some(column)) = (nums.next(), nums.next())
            && line > 0
        {
            return SqlError {
                line,
                column,
                message: message.to_string(),
            };
        }
    }
    let message = match text.rfind(" at Line: ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let trimmed = sql.trim_end();
    let line = trimmed.lines().count().max(1) as u64;
    let column = trimmed.lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
    SqlError {
        line,
        column,
        message,
    }
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn first_aggregate(e: &Expr) -> Option<Expr> {
    let mut terms = Vec::new();
    e.terms(&mut terms);
    terms.first().map(|t| Expr::Agg(*t))
}

#[derive(Default)]
struct Builder {
    /// Metrics named so far, in order; terms index them.
    metrics: Vec<String>,
    /// No metric beyond `metrics` may be named (a `clear` condition).
    fixed: bool,
    /// `WHERE metric = 'x'`: the only metric the rule may read.
    where_metric: Option<String>,
    /// Where the first `count(*)` is (it reads the only metric).
    star: Option<SqlError>,
    /// Where the first group comparison (`site.avg(x)`) is.
    level_term: Option<SqlError>,
    level: Option<DeviceLevel>,
    filter: SeriesFilter,
    aliases: Vec<(String, Expr)>,
    value: Option<Expr>,
}

impl Builder {
    fn select(&mut self, e: &Ast, alias: Option<&Ident>) -> Result<(), SqlError> {
        if let Ast::Identifier(id) = e {
            return match key_level(&id.value) {
                Some(_) | None if id.value.eq_ignore_ascii_case("metric") => Ok(()),
                Some(_) => Ok(()),
                None => Err(err_at(
                    e,
                    format!(
                        "unknown column `{}`: select device, site, building, line, metric or an \
                         aggregate such as avg({})",
                        id.value, id.value
                    ),
                )),
            };
        }
        let value = self.value_expr(e)?;
        if let Some(a) = alias {
            self.aliases
                .push((a.value.to_ascii_lowercase(), value.clone()));
        }
        self.value.get_or_insert(value);
        Ok(())
    }

    /// The index of `metric` among the rule's metrics, added if new.
    fn use_metric(&mut self, node: &impl Spanned, metric: &str) -> Result<u8, SqlError> {
        if let Some(only) = &self.where_metric
            && only != metric
        {
            return Err(err_at(
                node,
                format!(
                    "WHERE metric = '{only}' admits only `{only}`, and this reads `{metric}`: \
                     drop the metric filter to read several metrics"
                ),
            ));
        }
        if let Some(i) = self.metrics.iter().position(|m| m == metric) {
            return Ok(i as u8);
        }
        if self.fixed {
            return Err(err_at(
                node,
                format!(
                    "`{metric}` is not read by the rule's query ({}): a condition names only \
                     its metrics",
                    self.metrics.join(", ")
                ),
            ));
        }
        if self.metrics.len() >= MAX_RULE_METRICS {
            return Err(err_at(
                node,
                format!("a rule reads at most {MAX_RULE_METRICS} metrics"),
            ));
        }
        self.metrics.push(metric.to_string());
        Ok((self.metrics.len() - 1) as u8)
    }

    fn where_clause(&mut self, e: &Ast) -> Result<(), SqlError> {
        match e {
            Ast::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                self.where_clause(left)?;
                self.where_clause(right)
            }
            Ast::Nested(inner) => self.where_clause(inner),
            _ => {
                if let Some(()) = self.value_term(e)? {
                    return Ok(());
                }
                if let Some(()) = self.metric_term(e)? {
                    return Ok(());
                }
                let mut any = Vec::new();
                device_matches(e, &mut any)?;
                self.filter.all.push(any);
                Ok(())
            }
        }
    }

    /// `value > 3`, `value BETWEEN a AND b`.
    fn value_term(&mut self, e: &Ast) -> Result<Option<()>, SqlError> {
        match e {
            Ast::BinaryOp { left, op, right } => {
                let (cmp, n) = match (is_ident(left, "value"), is_ident(right, "value")) {
                    (true, _) => (comparison(op), number(right)),
                    (_, true) => (comparison(op).map(flip), number(left)),
                    _ => return Ok(None),
                };
                let cmp = cmp.ok_or_else(|| err_at(e, "expected a comparison of value"))?;
                let n = n.ok_or_else(|| err_at(e, "value is compared with a number"))?;
                if !self.filter.value.narrow(cmp, n) {
                    return Err(err_at(e, "value <> n is not supported; use < or >"));
                }
                Ok(Some(()))
            }
            Ast::Between {
                expr,
                negated: false,
                low,
                high,
            } if is_ident(expr, "value") => {
                let (Some(lo), Some(hi)) = (number(low), number(high)) else {
                    return Err(err_at(e, "value BETWEEN takes two numbers"));
                };
                self.filter.value.narrow(Cmp::Ge, lo);
                self.filter.value.narrow(Cmp::Le, hi);
                Ok(Some(()))
            }
            _ => Ok(None),
        }
    }

    /// `metric = 'temperature'`.
    fn metric_term(&mut self, e: &Ast) -> Result<Option<()>, SqlError> {
        if let Ast::BinaryOp { left, op, right } = e
            && is_ident(left, "metric")
        {
            if *op != BinaryOperator::Eq {
                return Err(err_at(e, "metric is filtered with = 'name'"));
            }
            let name = string(right).ok_or_else(|| err_at(&**right, "expected a quoted name"))?;
            if let Some(other) = self.metrics.iter().find(|m| **m != name) {
                return Err(err_at(
                    e,
                    format!(
                        "WHERE metric = '{name}' admits only `{name}`, and the rule reads \
                         `{other}`: drop the metric filter to read several metrics"
                    ),
                ));
            }
            if self.metrics.is_empty() {
                self.use_metric(e, &name)?;
            }
            self.where_metric = Some(name);
            return Ok(Some(()));
        }
        Ok(None)
    }

    /// The grouping keys and the window, with the window's place.
    fn group_by(
        &mut self,
        keys: &[Ast],
        select: &impl Spanned,
    ) -> Result<(WindowKind, SqlError), SqlError> {
        let mut window = None;
        for k in keys {
            match k {
                Ast::Identifier(id) if id.value.eq_ignore_ascii_case("metric") => {}
                Ast::Identifier(id) => {
                    let level = key_level(&id.value).ok_or_else(|| {
                        err_at(
                            k,
                            format!(
                                "unknown key `{}`: group by {}",
                                id.value,
                                GroupingWord::WORDS
                            ),
                        )
                    })?;
                    // The finest level named wins.
                    self.level = Some(match (self.level, level) {
                        (Some(DeviceLevel::Device), _) | (_, DeviceLevel::Device) => {
                            DeviceLevel::Device
                        }
                        (Some(DeviceLevel::Level(a)), DeviceLevel::Level(b)) => {
                            DeviceLevel::Level(a.max(b))
                        }
                        (_, l) => l,
                    });
                }
                Ast::Function(f) => {
                    if window.is_some() {
                        return Err(err_at(k, "expected one window in GROUP BY, found a second"));
                    }
                    window = Some((window_fn(&object_name(&f.name), &f.args, k)?, err_at(k, "")));
                }
                other => {
                    return Err(err_at(
                        other,
                        format!("expected a key or a window in GROUP BY: {WINDOWS}"),
                    ));
                }
            }
        }
        window.ok_or_else(|| err_at(select, format!("expected a window in GROUP BY: {WINDOWS}")))
    }

    /// A `HAVING` condition.
    fn condition(&mut self, e: &Ast) -> Result<Expr, SqlError> {
        let expr = self.value_expr(e)?;
        if !expr.is_condition() {
            return Err(err_at(
                e,
                "expected a condition in HAVING, e.g. avg(temperature) > 30",
            ));
        }
        Ok(expr)
    }

    fn value_expr(&mut self, e: &Ast) -> Result<Expr, SqlError> {
        Ok(match e {
            Ast::Nested(inner) => self.value_expr(inner)?,
            Ast::Value(v) => Expr::Num(
                number(e)
                    .ok_or_else(|| err_at(e, format!("expected a number, found {}", v.value)))?,
            ),
            Ast::Identifier(id) => {
                let name = id.value.to_ascii_lowercase();
                match self.aliases.iter().find(|(a, _)| *a == name) {
                    Some((_, expr)) => expr.clone(),
                    None => {
                        return Err(err_at(
                            e,
                            format!(
                                "unknown name `{}`: expected an aggregate such as avg({}) or an \
                                 alias from SELECT",
                                id.value, id.value
                            ),
                        ));
                    }
                }
            }
            Ast::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match self.value_expr(expr)? {
                // A negative number, not a negation: thresholds stay numbers.
                Expr::Num(n) => Expr::Num(-n),
                other => Expr::Neg(Box::new(other)),
            },
            Ast::UnaryOp {
                op: UnaryOperator::Plus,
                expr,
            } => self.value_expr(expr)?,
            Ast::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Expr::Not(Box::new(self.condition(expr)?)),
            Ast::BinaryOp { left, op, right } => {
                let (l, r) = (self.value_expr(left)?, self.value_expr(right)?);
                let (l, r) = (Box::new(l), Box::new(r));
                match op {
                    BinaryOperator::And | BinaryOperator::Or => {
                        if !l.is_condition() || !r.is_condition() {
                            return Err(err_at(e, "AND and OR join conditions"));
                        }
                        if *op == BinaryOperator::And {
                            Expr::And(l, r)
                        } else {
                            Expr::Or(l, r)
                        }
                    }
                    BinaryOperator::Plus => Expr::Arith(l, Arith::Add, r),
                    BinaryOperator::Minus => Expr::Arith(l, Arith::Sub, r),
                    BinaryOperator::Multiply => Expr::Arith(l, Arith::Mul, r),
                    BinaryOperator::Divide => Expr::Arith(l, Arith::Div, r),
                    other => {
                        let cmp = comparison(other).ok_or_else(|| {
                            err_at(
                                e,
                                format!(
                                    "unsupported operator {other}: expected a comparison, AND, \
                                     OR or arithmetic"
                                ),
                            )
                        })?;
                        if l.is_condition() || r.is_condition() {
                            return Err(err_at(e, "a comparison compares numbers, not conditions"));
                        }
                        Expr::Cmp(l, cmp, r)
                    }
                }
            }
            Ast::Function(f) => {
                let full = object_name(&f.name);
                // `site.avg(x)`: the aggregate of the device's site.
                let (scope, name) = match full.rsplit_once('.') {
                    None => (Scope::Group, full),
                    Some((level, name)) => {
                        let scope = match key_level(level) {
                            Some(DeviceLevel::Level(n)) => Scope::Level(n),
                            Some(DeviceLevel::Device) => {
                                return Err(err_at(
                                    e,
                                    format!("`device.` is the rule's own group: write {name}(...)"),
                                ));
                            }
                            _ => {
                                return Err(err_at(
                                    e,
                                    format!(
                                        "unknown level `{level}` in `{full}`: compare with \
                                         site.{name}(...), building.{name}(...) or \
                                         line.{name}(...)"
                                    ),
                                ));
                            }
                        };
                        if self.level_term.is_none() {
                            self.level_term = Some(err_at(e, ""));
                        }
                        (scope, name.to_string())
                    }
                };
                let args = fn_args(&f.args);
                let (aggregate, metric_arg) = match name.as_str() {
                    "percentile" | "quantile" => {
                        let q = args
                            .get(1)
                            .and_then(|a| number(a))
                            .filter(|q| (0.0..=1.0).contains(q))
                            .ok_or_else(|| {
                                err_at(e, format!("{name} takes a metric and a fraction in 0..1"))
                            })?;
                        (
                            Aggregate::Quantile((q * 10_000.0).round() as u16),
                            args.first(),
                        )
                    }
                    _ if window_name(&name) && name != "count" => {
                        return Err(err_at(
                            e,
                            format!("{name} is a window: it goes in GROUP BY"),
                        ));
                    }
                    _ => {
                        let aggregate = Aggregate::parse(&name).ok_or_else(|| {
                            err_at(
                                e,
                                format!("unknown aggregate `{name}`; expected one of {AGGREGATES}"),
                            )
                        })?;
                        let star = aggregate == Aggregate::Count && args.is_empty();
                        if args.len() != 1 && !star {
                            return Err(err_at(
                                e,
                                format!("{name} takes one metric, e.g. {name}(temperature)"),
                            ));
                        }
                        (aggregate, args.first())
                    }
                };
                let metric = match metric_arg {
                    Some(Ast::Identifier(id)) => self.use_metric(e, &id.value)?,
                    None | Some(Ast::Wildcard(_)) if aggregate == Aggregate::Count => {
                        if self.star.is_none() {
                            self.star = Some(err_at(e, ""));
                        }
                        0
                    }
                    Some(other) => {
                        return Err(err_at(
                            *other,
                            format!("expected a metric name as the argument of {name}"),
                        ));
                    }
                    None => return Err(err_at(e, format!("{name} takes a metric"))),
                };
                Expr::Agg(Term {
                    metric,
                    aggregate,
                    scope,
                })
            }
            other => {
                return Err(err_at(
                    other,
                    "expected an aggregate, a number, a comparison, AND, OR or NOT",
                ));
            }
        })
    }
}

fn fn_args(args: &FunctionArguments) -> Vec<&Ast> {
    match args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => None,
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn window_name(name: &str) -> bool {
    matches!(
        name,
        "tumbling" | "hopping" | "sliding" | "session" | "count"
    )
}

fn window_fn(name: &str, args: &FunctionArguments, node: &Ast) -> Result<WindowKind, SqlError> {
    let args = fn_args(args);
    let dur = |i: usize| -> Result<u64, SqlError> {
        let a = args
            .get(i)
            .ok_or_else(|| err_at(node, format!("{} is missing an interval", name)))?;
        duration_ms(a)
    };
    let count = |i: usize| -> Result<u64, SqlError> {
        let a = args
            .get(i)
            .ok_or_else(|| err_at(node, "COUNT is missing its number of samples"))?;
        number(a)
            .filter(|n| n.fract() == 0.0 && *n >= 1.0)
            .map(|n| n as u64)
            .ok_or_else(|| err_at(*a, "expected a whole number of samples"))
    };
    let arity = |lo: usize, hi: usize, usage: &str| {
        if (lo..=hi).contains(&args.len()) {
            Ok(())
        } else {
            Err(err_at(node, format!("expected {usage}")))
        }
    };
    let kind = match name {
        "tumbling" => {
            arity(1, 1, "TUMBLING(INTERVAL '10' SECOND)")?;
            WindowKind::Tumbling { size_ms: dur(0)? }
        }
        "hopping" => {
            arity(
                2,
                2,
                "HOPPING(size, hop), e.g. HOPPING(INTERVAL '1' MINUTE, INTERVAL '10' SECOND)",
            )?;
            WindowKind::Hopping {
                size_ms: dur(0)?,
                hop_ms: dur(1)?,
            }
        }
        "sliding" => {
            arity(1, 1, "SLIDING(INTERVAL '30' SECOND)")?;
            WindowKind::Sliding { size_ms: dur(0)? }
        }
        "session" => {
            arity(
                1,
                2,
                "SESSION(gap[, max]), e.g. SESSION(INTERVAL '5' SECOND)",
            )?;
            WindowKind::Session {
                gap_ms: dur(0)?,
                max_ms: if args.len() > 1 { Some(dur(1)?) } else { None },
            }
        }
        "count" => {
            arity(1, 2, "COUNT(n[, hop]), e.g. COUNT(100)")?;
            WindowKind::Count {
                n: count(0)?,
                hop: if args.len() > 1 {
                    Some(count(1)?)
                } else {
                    None
                },
            }
        }
        other => {
            return Err(err_at(
                node,
                format!("unknown window `{other}`; expected {WINDOWS}"),
            ));
        }
    };
    kind.validate().map_err(|m| err_at(node, m))?;
    Ok(kind)
}

/// `INTERVAL '10' SECOND`, `INTERVAL '10 seconds'`, `'500ms'`.
fn duration_ms(e: &Ast) -> Result<u64, SqlError> {
    let bad = || err_at(e, "expected an interval such as INTERVAL '10' SECOND");
    match e {
        Ast::Interval(iv) => {
            let text = string(&iv.value)
                .or_else(|| number(&iv.value).map(|n| n.to_string()))
                .ok_or_else(bad)?;
            let unit_ms = match &iv.leading_field {
                None => return parse_duration(&text).ok_or_else(bad),
                Some(f) => field_ms(f).ok_or_else(|| {
                    err_at(e, format!("unsupported interval unit {f}: use MILLISECOND(S), SECOND, MINUTE, HOUR or DAY"))
                })?,
            };
            let n: f64 = text.trim().parse().map_err(|_| bad())?;
            to_duration(n * unit_ms as f64).ok_or_else(bad)
        }
        _ => string(e).and_then(|t| parse_duration(&t)).ok_or_else(bad),
    }
}

fn field_ms(f: &DateTimeField) -> Option<u64> {
    Some(match f {
        DateTimeField::Millisecond | DateTimeField::Milliseconds => 1,
        DateTimeField::Second | DateTimeField::Seconds => 1000,
        DateTimeField::Minute | DateTimeField::Minutes => 60_000,
        DateTimeField::Hour | DateTimeField::Hours => 3_600_000,
        DateTimeField::Day | DateTimeField::Days => 86_400_000,
        _ => return None,
    })
}

fn to_duration(ms: f64) -> Option<u64> {
    (1.0..1e15).contains(&ms).then_some(ms.round() as u64)
}

/// `10s`, `500ms`, `10 seconds`, `2 minutes`, `1h`.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit_ms = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "" | "s" | "sec" | "second" | "seconds" => 1000.0,
        "m" | "min" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return None,
    };
    to_duration(n * unit_ms)
}

/// A grouping column: the words of [`GroupingWord`] that name devices.
fn key_level(name: &str) -> Option<DeviceLevel> {
    match GroupingWord::parse(name) {
        Ok(GroupingWord::Devices(level)) => Some(level),
        _ => None,
    }
}

fn is_ident(e: &Ast, name: &str) -> bool {
    matches!(e, Ast::Identifier(id) if id.value.eq_ignore_ascii_case(name))
}

fn number(e: &Ast) -> Option<f64> {
    match e {
        Ast::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        Ast::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => number(expr).map(|n| -n),
        Ast::Nested(inner) => number(inner),
        _ => None,
    }
}

fn string(e: &Ast) -> Option<String> {
    match e {
        Ast::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn comparison(op: &BinaryOperator) -> Option<Cmp> {
    Some(match op {
        BinaryOperator::Gt => Cmp::Gt,
        BinaryOperator::GtEq => Cmp::Ge,
        BinaryOperator::Lt => Cmp::Lt,
        BinaryOperator::LtEq => Cmp::Le,
        BinaryOperator::Eq => Cmp::Eq,
        BinaryOperator::NotEq => Cmp::Ne,
        _ => return None,
    })
}

/// `3 < value` is `value > 3`.
fn flip(c: Cmp) -> Cmp {
    match c {
        Cmp::Gt => Cmp::Lt,
        Cmp::Ge => Cmp::Le,
        Cmp::Lt => Cmp::Gt,
        Cmp::Le => Cmp::Ge,
        other => other,
    }
}

/// A term on the device's identity: `device = 'a'`, `site <> 'x'`,
/// `device LIKE 'pump-%'`, `line IN ('l1', 'l2')`, or an `OR` of them.
fn device_matches(e: &Ast, any: &mut Vec<Match>) -> Result<(), SqlError> {
    let field_of = |x: &Ast| -> Result<Field, SqlError> {
        match x {
            Ast::Identifier(id) => Field::parse(&id.value).ok_or_else(|| {
                err_at(
                    x,
                    format!(
                        "unknown column `{}` in WHERE: expected device, site, building, line, \
                         path, metric or value",
                        id.value
                    ),
                )
            }),
            other => Err(err_at(
                other,
                "expected device, site, building, line, path, metric or value",
            )),
        }
    };
    let text = |x: &Ast| string(x).ok_or_else(|| err_at(x, "expected a quoted string"));
    match e {
        Ast::Nested(inner) => device_matches(inner, any),
        Ast::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            device_matches(left, any)?;
            device_matches(right, any)
        }
        Ast::BinaryOp { left, op, right }
            if matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq) =>
        {
            any.push(Match {
                field: field_of(left)?,
                pattern: escape_glob(&text(right)?),
                negate: *op == BinaryOperator::NotEq,
            });
            Ok(())
        }
        Ast::Like {
            negated,
            expr,
            pattern,
            ..
        } => {
            any.push(Match {
                field: field_of(expr)?,
                pattern: like_to_glob(&text(pattern)?),
                negate: *negated,
            });
            Ok(())
        }
        Ast::InList {
            expr,
            list,
            negated: false,
        } => {
            let field = field_of(expr)?;
            for item in list {
                any.push(Match {
                    field,
                    pattern: escape_glob(&text(item)?),
                    negate: false,
                });
            }
            Ok(())
        }
        other => Err(err_at(
            other,
            "expected a filter: device/site/building/line/path = 'x', LIKE 'x%', IN (...), \
             value > n, or metric = 'x'",
        )),
    }
}

/// Names never contain glob characters (the name alphabet forbids them),
/// so an exact name is its own pattern.
fn escape_glob(s: &str) -> String {
    s.to_string()
}

/// SQL `LIKE` (`%`, `_`) to a glob (`*`, `?`).
fn like_to_glob(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '%' => '*',
            '_' => '?',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_a_location_is_placed_at_the_start() {
        // Found by the token-soup property test: a string as the table.
        let e = parse("FROM 'x'").expect_err("not a rule");
        assert_eq!((e.line, e.column), (1, 1), "{e}");
        assert!(e.message.contains("FROM telemetry"), "{e}");
    }

    #[test]
    fn the_example_compiles() {
        let q = parse(
            "SELECT device, avg(temperature) AS t FROM telemetry WHERE site = 'plant-1' \
             GROUP BY device, TUMBLING(INTERVAL '10' SECOND) HAVING avg(temperature) > 30",
        )
        .expect("valid");
        assert_eq!(q.window, WindowKind::Tumbling { size_ms: 10_000 });
        assert_eq!(q.group_by.device, DeviceLevel::Device);
        assert_eq!(q.metrics, vec!["temperature".to_string()]);
        assert_eq!(q.condition, Expr::compare(Aggregate::Mean, Cmp::Gt, 30.0));
        assert_eq!(q.value, Expr::agg(Aggregate::Mean));
        assert!(q.filter.admits("d1", Some("plant-1/b1")));
        assert!(!q.filter.admits("d1", Some("plant-2/b1")));
    }

    #[test]
    fn oversized_rules_are_refused_before_parsing_at_their_place() {
        let rule = |terms: usize| {
            let having: Vec<String> = (0..terms).map(|i| format!("avg(t) > {i}")).collect();
            format!(
                "SELECT device FROM telemetry GROUP BY device, TUMBLING(INTERVAL '1' SECOND)\nHAVING {}",
                having.join(" OR ")
            )
        };
        // 5,000 terms (the 20 KB rule that overflowed the stack).
        let e = parse(&rule(5000)).expect_err("too large");
        assert!(e.message.contains("exceeds the limit of 8192"), "{e}");
        // Small enough in bytes, too many operators: placed at the first
        // one past the limit.
        let e = parse(&rule(140)).expect_err("too many operators");
        assert!(e.message.contains("operators"), "{e}");
        assert_eq!(e.line, 2, "{e}");
        // Within the limits: compiles, and evaluates without trouble.
        let q = parse(&rule(120)).expect("within the limits");
        assert!(matches!(q.condition, Expr::Or(..)));
        let nested = format!(
            "{}avg(t) > 1{}",
            "(".repeat(MAX_RULE_NESTING + 1),
            ")".repeat(MAX_RULE_NESTING + 1)
        );
        let e = parse_condition(&q, &nested).expect_err("too deep");
        assert!(e.message.contains("nested"), "{e}");
        assert_eq!((e.line, e.column), (1, MAX_RULE_NESTING as u64 + 1), "{e}");
    }

    fn term(metric: u8, aggregate: Aggregate, scope: Scope) -> Box<Expr> {
        Box::new(Expr::Agg(Term {
            metric,
            aggregate,
            scope,
        }))
    }

    #[test]
    fn aggregates_name_their_metrics_and_a_rule_reads_several() {
        let q = parse(
            "SELECT device, avg(voltage) * avg(current) AS power FROM telemetry \
             GROUP BY device, TUMBLING(INTERVAL '10' SECOND) HAVING power > 2000",
        )
        .expect("valid");
        assert_eq!(
            q.metrics,
            vec!["voltage".to_string(), "current".to_string()]
        );
        let power = Expr::Arith(
            term(0, Aggregate::Mean, Scope::Group),
            Arith::Mul,
            term(1, Aggregate::Mean, Scope::Group),
        );
        assert_eq!(q.value, power);
        assert_eq!(
            q.condition,
            Expr::Cmp(Box::new(power), Cmp::Gt, Box::new(Expr::Num(2000.0)))
        );
        let q = parse(
            "SELECT device FROM telemetry GROUP BY device, HOPPING(INTERVAL '1' MINUTE, \
             INTERVAL '10' SECOND) HAVING avg(temperature) > 30 AND avg(humidity) > 80",
        )
        .expect("valid");
        assert_eq!(
            q.metrics,
            vec!["temperature".to_string(), "humidity".to_string()]
        );
        assert!(matches!(q.condition, Expr::And(..)));
        // The same metric twice is one metric.
        let q = parse(
            "SELECT device FROM telemetry GROUP BY device, TUMBLING(INTERVAL '1' SECOND) \
             HAVING max(t) - min(t) > 3",
        )
        .expect("valid");
        assert_eq!(q.metrics, vec!["t".to_string()]);
        // A metric filter with the one metric read stays valid.
        let q = parse(
            "SELECT device, count(*) FROM telemetry WHERE metric = 'door' \
             GROUP BY device, TUMBLING(INTERVAL '1' SECOND) HAVING count(*) > 3",
        )
        .expect("valid");
        assert_eq!(q.metrics, vec!["door".to_string()]);
    }

    #[test]
    fn a_group_comparison_reads_the_level_of_the_device() {
        let q = parse(
            "SELECT device, avg(temperature) FROM telemetry \
             GROUP BY device, TUMBLING(INTERVAL '10' SECOND) \
             HAVING avg(temperature) > site.avg(temperature) + 10",
        )
        .expect("valid");
        assert_eq!(q.metrics, vec!["temperature".to_string()]);
        assert_eq!(
            q.condition,
            Expr::Cmp(
                term(0, Aggregate::Mean, Scope::Group),
                Cmp::Gt,
                Box::new(Expr::Arith(
                    term(0, Aggregate::Mean, Scope::Level(1)),
                    Arith::Add,
                    Box::new(Expr::Num(10.0)),
                )),
            )
        );
        let q = parse(
            "SELECT device FROM telemetry GROUP BY device, TUMBLING(INTERVAL '10' SECOND) \
             HAVING p99(t) > line.p99(t) * 2",
        )
        .expect("valid");
        let mut terms = Vec::new();
        q.condition.terms(&mut terms);
        assert_eq!(terms[1].scope, Scope::Level(3));
    }

    #[test]
    fn multi_metric_and_group_comparison_errors_are_placed() {
        let place = |text: &str| {
            let e = parse(text).expect_err(text);
            (e.line, e.column, e.message)
        };
        // A group comparison in a rule grouped per site: at the term.
        let (line, column, m) = place(
            "SELECT site FROM telemetry GROUP BY site, TUMBLING(INTERVAL '1' SECOND)\n\
             HAVING avg(t) > site.avg(t) + 1",
        );
        assert_eq!((line, column), (2, 17), "{m}");
        assert!(m.contains("grouped per device"), "{m}");
        // Several metrics over session windows: at the window.
        let (line, column, m) = place(
            "SELECT device FROM telemetry\nGROUP BY device, SESSION(INTERVAL '5' SECOND)\n\
             HAVING avg(a) > 1 AND avg(b) > 2",
        );
        assert_eq!((line, column), (2, 18), "{m}");
        assert!(m.contains("TUMBLING or HOPPING, not SESSION"), "{m}");
        // A group comparison over count windows too.
        let (_, _, m) = place(
            "SELECT device FROM telemetry GROUP BY device, COUNT(10) HAVING avg(a) > site.avg(a)",
        );
        assert!(m.contains("not COUNT"), "{m}");
        // count(*) among several metrics: at the count.
        let (line, column, m) = place(
            "SELECT device FROM telemetry GROUP BY device, TUMBLING(INTERVAL '1' SECOND) \
             HAVING avg(a) > 1 AND avg(b) > 1 AND count(*) > 2",
        );
        assert_eq!((line, column), (1, 114), "{m}");
        assert!(m.contains("count(*) is ambiguous"), "{m}");
        // A metric filter and another metric: at the aggregate.
        let (line, column, m) = place(
            "SELECT device FROM telemetry WHERE metric = 'a'\n\
             GROUP BY device, TUMBLING(INTERVAL '1' SECOND) HAVING avg(b) > 1",
        );
        assert_eq!((line, column), (2, 55), "{m}");
        assert!(m.contains("admits only `a`"), "{m}");
        // An unknown level: at the term.
        let (line, column, m) = place(
            "SELECT device FROM telemetry GROUP BY device, TUMBLING(INTERVAL '1' SECOND) \
             HAVING avg(a) > plant.avg(a)",
        );
        assert_eq!((line, column), (1, 93), "{m}");
        assert!(m.contains("unknown level `plant`"), "{m}");
        // A clear condition naming a metric the query does not read.
        let q = parse(
            "SELECT device FROM telemetry GROUP BY device, TUMBLING(INTERVAL '1' SECOND) \
             HAVING avg(a) > 1 AND avg(b) > 1",
        )
        .expect("valid");
        let e = parse_condition(&q, "avg(a) < 1 OR avg(c) < 1").expect_err("c is not read");
        assert_eq!((e.line, e.column), (1, 15), "{e}");
        assert!(e.message.contains("`c` is not read"), "{e}");
        assert!(parse_condition(&q, "avg(a) < 1 OR avg(b) < 1").is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(10_000));
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("2 minutes"), Some(120_000));
        assert_eq!(parse_duration("1.5h"), Some(5_400_000));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("0s"), None);
    }
}
