//! A bounded reader for the subset of Python's pickle format that `torch.save` writes
//! (protocol 2, and the few protocol 4 opcodes a newer writer may use).
//!
//! Nothing is executed: a `GLOBAL` becomes a [`Node::Global`] naming the class, a `REDUCE` or
//! `NEWOBJ` a [`Node::Call`] recording the callable and its arguments, a `BUILD` the state it
//! would set. Every object is one node of an arena ([`Pickle::nodes`]) and is referred to by its
//! index, so memo entries are shared, never copied (a pickle that refers to one object 2^40
//! times costs one node per opcode), and lists and dicts mutated after they were memoized are
//! seen through every reference, as in Python.
//!
//! Limits, each checked before the memory it guards is allocated: the pickle's size (the caller
//! reads at most [`MAX_PICKLE_BYTES`]), [`MAX_OPS`] opcodes, [`MAX_OBJECTS`] objects,
//! [`MAX_MEMO`] memo entries, [`MAX_DEPTH`] levels of nesting (counted when a container is
//! built), [`MAX_ITEMS`] items in one container, and every length an opcode declares against
//! the bytes actually left. Any other opcode is refused by name. The walks over the result are
//! iterative and visit each node once, so cycles (a list appended to itself) and deep chains are
//! harmless.

use std::collections::HashMap;

/// The largest `data.pkl` read (real fastai files: about 10 KB per 100 tensors).
pub(super) const MAX_PICKLE_BYTES: u64 = 32 << 20;
/// The most opcodes executed.
pub(super) const MAX_OPS: usize = 8_000_000;
/// The most objects (nodes) built.
pub(super) const MAX_OBJECTS: usize = 2_000_000;
/// The most memo entries.
pub(super) const MAX_MEMO: usize = 1_000_000;
/// The deepest nesting of containers (real files: under 12).
pub(super) const MAX_DEPTH: u32 = 100;
/// The most items in one tuple, list or dict.
pub(super) const MAX_ITEMS: usize = 1_000_000;

/// An object's index in [`Pickle::nodes`].
pub(super) type Id = u32;

/// One unpickled object, as data.
#[derive(Debug)]
pub(super) enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// A float (its value is not needed).
    Float,
    Str(Box<str>),
    /// A bytes object (its value is not needed; its length was checked).
    Bytes,
    Tuple(Box<[Id]>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    /// `module.name`, never imported.
    Global(Box<(String, String)>),
    /// `func(*args)` (REDUCE) or `cls.__new__(cls, *args)` (NEWOBJ), never called.
    Call(Box<Call>),
    /// A persistent id (torch: `('storage', StorageClass, key, location, numel)`).
    PersId(Id),
}

/// A call recorded, with what later opcodes added to its result.
#[derive(Debug)]
pub(super) struct Call {
    pub func: Id,
    pub args: Id,
    /// Items set on the result (`SETITEM(S)`, an `OrderedDict`'s entries).
    pub items: Vec<(Id, Id)>,
    /// Items appended to the result (`APPEND(S)`).
    pub appended: Vec<Id>,
    /// The state `BUILD` gave it (the last one).
    pub state: Option<Id>,
}

/// A parsed pickle: the nodes and the root's index.
#[derive(Debug)]
pub(super) struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
}

impl Pickle {
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id as usize]
    }

    /// The string `id` holds, if it is one.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.node(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer `id` holds, if it is one.
    pub fn int(&self, id: Id) -> Option<i64> {
        match self.node(id) {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn seq(&self, id: Id) -> Option<&[Id]> {
        match self.node(id) {
            Node::Tuple(v) => Some(v),
            Node::List(v) => Some(v),
            _ => None,
        }
    }

    /// `(module, name)` of a global.
    pub fn global(&self, id: Id) -> Option<(&str, &str)> {
        match self.node(id) {
            Node::Global(g) => Some((g.0.as_str(), g.1.as_str())),
            _ => None,
        }
    }

    /// The entries of a dict, or of an `OrderedDict` (a call of `collections.OrderedDict`
    /// whose entries were set afterwards).
    pub fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.node(id) {
            Node::Dict(kv) => Some(kv),
            Node::Call(c)
                if self.global(c.func) == Some(("collections", "OrderedDict"))
                    && self.seq(c.args).is_some_and(|a| a.is_empty()) =>
            {
                Some(&c.items)
            }
            _ => None,
        }
    }

    /// The ids directly inside `id` (its children), in no particular order.
    pub fn children(&self, id: Id, out: &mut Vec<Id>) {
        match self.node(id) {
            Node::Tuple(v) => out.extend_from_slice(v),
            Node::List(v) => out.extend_from_slice(v),
            Node::Dict(kv) => out.extend(kv.iter().flat_map(|(k, v)| [*k, *v])),
            Node::Call(c) => {
                out.push(c.func);
                out.push(c.args);
                out.extend(c.items.iter().flat_map(|(k, v)| [*k, *v]));
                out.extend_from_slice(&c.appended);
                out.extend(c.state);
            }
            Node::PersId(p) => out.push(*p),
            _ => {}
        }
    }

    /// A short description of `id` for messages: "a dict", "a str", "a collections.X".
    pub fn describe(&self, id: Id) -> String {
        match self.node(id) {
            Node::None => "None".into(),
            Node::Bool(_) => "a bool".into(),
            Node::Int(_) => "an int".into(),
            Node::Float => "a float".into(),
            Node::Str(_) => "a str".into(),
            Node::Bytes => "bytes".into(),
            Node::Tuple(_) => "a tuple".into(),
            Node::List(_) => "a list".into(),
            Node::Dict(_) => "a dict".into(),
            Node::Global(g) => format!("the class {}.{}", g.0, g.1),
            Node::Call(c) => match self.global(c.func) {
                Some((m, n)) => format!("a {m}.{n}"),
                None => "an object".into(),
            },
            Node::PersId(_) => "a persistent id".into(),
        }
    }
}

/// What the stack holds: an object or a MARK.
#[derive(Clone, Copy)]
enum Slot {
    Obj(Id),
    Mark,
}

struct Parser<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    /// Each node's nesting depth (1 for a leaf).
    depth: Vec<u32>,
    stack: Vec<Slot>,
    memo: HashMap<u32, Id>,
    allowed: &'a dyn Fn(&str, &str) -> bool,
}

fn name(op: u8) -> String {
    let n = match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'P' => "PERSID",
        b'i' => "INST",
        b'o' => "OBJ",
        b'g' => "GET",
        b'p' => "PUT",
        0x82..=0x84 => "EXT",
        0x8b => "LONG4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "",
    };
    if n.is_empty() {
        format!("opcode 0x{op:02x}")
    } else {
        format!("opcode {n} (0x{op:02x})")
    }
}

impl Parser<'_> {
    fn err<T>(&self, what: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("data.pkl at byte {}: {what}", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&[u8], String> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return self.err(format!(
                "declares {n} bytes, {left} left: truncated or corrupt pickle"
            ));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N as u64)?);
        Ok(b)
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().take(1024).position(|&b| b == b'\n') else {
            return self.err("a GLOBAL name without a newline within 1024 bytes");
        };
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| format!("data.pkl at byte {}: a GLOBAL name is not UTF-8", self.pos))?
            .to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn push_node(&mut self, node: Node, depth: u32) -> Result<Id, String> {
        if self.nodes.len() >= MAX_OBJECTS {
            return self.err(format!("more than {MAX_OBJECTS} objects"));
        }
        if depth > MAX_DEPTH {
            return self.err(format!("objects nested more than {MAX_DEPTH} deep"));
        }
        let id = self.nodes.len() as Id;
        self.nodes.push(node);
        self.depth.push(depth);
        self.stack.push(Slot::Obj(id));
        Ok(id)
    }

    fn leaf(&mut self, node: Node) -> Result<(), String> {
        self.push_node(node, 1).map(|_| ())
    }

    fn pop(&mut self) -> Result<Id, String> {
        match self.stack.pop() {
            Some(Slot::Obj(id)) => Ok(id),
            Some(Slot::Mark) => self.err("an object expected, a MARK found"),
            None => self.err("the stack is empty"),
        }
    }

    fn top(&self) -> Result<Id, String> {
        match self.stack.last() {
            Some(Slot::Obj(id)) => Ok(*id),
            Some(Slot::Mark) => self.err("an object expected, a MARK found"),
            None => self.err("the stack is empty"),
        }
    }

    /// The objects above the topmost MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>, String> {
        let Some(m) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            return self.err("no MARK on the stack");
        };
        if self.stack.len() - m - 1 > MAX_ITEMS {
            return self.err(format!("more than {MAX_ITEMS} items in one container"));
        }
        let items = self.stack[m + 1..]
            .iter()
            .filter_map(|s| match s {
                Slot::Obj(id) => Some(*id),
                Slot::Mark => None,
            })
            .collect();
        self.stack.truncate(m);
        Ok(items)
    }

    fn max_depth(&self, ids: &[Id]) -> u32 {
        ids.iter()
            .map(|&i| self.depth[i as usize])
            .max()
            .unwrap_or(0)
    }

    fn container(&mut self, node: Node, items: &[Id]) -> Result<(), String> {
        let d = self.max_depth(items) + 1;
        self.push_node(node, d).map(|_| ())
    }

    fn tuple(&mut self, items: Vec<Id>) -> Result<(), String> {
        let d = self.max_depth(&items) + 1;
        self.push_node(Node::Tuple(items.into_boxed_slice()), d)
            .map(|_| ())
    }

    /// Raises the recorded depth of a container that just received `items`.
    fn grow(&mut self, target: Id, items: &[Id]) -> Result<(), String> {
        let d = self.max_depth(items) + 1;
        let t = &mut self.depth[target as usize];
        if d > *t {
            *t = d;
        }
        if *t > MAX_DEPTH {
            return self.err(format!("objects nested more than {MAX_DEPTH} deep"));
        }
        Ok(())
    }

    fn append(&mut self, target: Id, items: Vec<Id>) -> Result<(), String> {
        self.grow(target, &items)?;
        let (len, list) = match &mut self.nodes[target as usize] {
            Node::List(v) => (v.len(), v),
            Node::Call(c) => (c.appended.len(), &mut c.appended),
            _ => {
                let what = self.describe(target);
                return self.err(format!("APPEND(S) to {what}"));
            }
        };
        if len + items.len() > MAX_ITEMS {
            return self.err(format!("more than {MAX_ITEMS} items in one container"));
        }
        list.extend(items);
        Ok(())
    }

    fn set_items(&mut self, target: Id, items: Vec<Id>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return self.err("SETITEMS with an odd number of objects");
        }
        self.grow(target, &items)?;
        let (len, map) = match &mut self.nodes[target as usize] {
            Node::Dict(kv) => (kv.len(), kv),
            Node::Call(c) => (c.items.len(), &mut c.items),
            _ => {
                let what = self.describe(target);
                return self.err(format!("SETITEM(S) on {what}"));
            }
        };
        if len + items.len() / 2 > MAX_ITEMS {
            return self.err(format!("more than {MAX_ITEMS} items in one container"));
        }
        map.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        Ok(())
    }

    fn describe(&self, id: Id) -> String {
        match &self.nodes[id as usize] {
            Node::List(_) => "a list".into(),
            Node::Dict(_) => "a dict".into(),
            Node::Tuple(_) => "a tuple".into(),
            Node::Str(_) => "a str".into(),
            Node::Call(_) => "an object".into(),
            _ => "a scalar".into(),
        }
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let id = self.top()?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return self.err(format!("more than {MAX_MEMO} memo entries"));
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(Slot::Obj(id));
                Ok(())
            }
            None => self.err(format!("memo entry {key} was never stored")),
        }
    }

    fn global(&mut self, module: String, class: String) -> Result<(), String> {
        if !(self.allowed)(&module, &class) {
            return Err(format!(
                "the pickle needs the Python class {module}.{class}, outside the plain tensor \
                 subset (a state_dict of tensors, or {{'model': state_dict, 'opt': ...}} as \
                 fastai's learn.save writes it); torch.load(weights_only=True) would refuse it \
                 too"
            ));
        }
        self.leaf(Node::Global(Box::new((module, class))))
    }

    fn string(&mut self, n: u64) -> Result<(), String> {
        let pos = self.pos;
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| format!("data.pkl at byte {pos}: a string that is not UTF-8"))?
            .into();
        self.leaf(Node::Str(s))
    }

    fn bytes(&mut self, n: u64) -> Result<(), String> {
        self.take(n)?;
        self.leaf(Node::Bytes)
    }

    fn run(&mut self) -> Result<Id, String> {
        let mut ops = 0usize;
        loop {
            ops += 1;
            if ops > MAX_OPS {
                return self.err(format!("more than {MAX_OPS} opcodes"));
            }
            let op = match self.data.get(self.pos) {
                Some(&op) => op,
                None => return self.err("the pickle ends without STOP: truncated"),
            };
            self.pos += 1;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return self.err(format!("pickle protocol {v}"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.le::<8>()?;
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(root);
                }
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.stack.push(Slot::Obj(id));
                }
                b'N' => self.leaf(Node::None)?,
                0x88 => self.leaf(Node::Bool(true))?,
                0x89 => self.leaf(Node::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.leaf(Node::Int(v.into()))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.leaf(Node::Int(v.into()))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.leaf(Node::Int(v.into()))?
                }
                0x8a => {
                    // LONG1: n bytes, little-endian two's complement.
                    let n = self.u8()?;
                    if n > 8 {
                        return self.err(format!("a {n}-byte integer (at most 8 are read)"));
                    }
                    let b = self.take(n.into())?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= i64::from(x) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n as usize - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.leaf(Node::Int(v))?
                }
                b'G' => {
                    self.le::<8>()?;
                    self.leaf(Node::Float)?
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?);
                    self.string(n.into())?
                }
                0x8c => {
                    let n = self.u8()?;
                    self.string(n.into())?
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    self.string(n)?
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.le()?);
                    if n < 0 {
                        return self.err("a negative string length");
                    }
                    self.bytes(n as u64)?
                }
                b'U' | b'C' => {
                    let n = self.u8()?;
                    self.bytes(n.into())?
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le()?);
                    self.bytes(n.into())?
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.le()?);
                    self.bytes(n)?
                }
                b')' => self.leaf(Node::Tuple(Box::new([])))?,
                b']' => self.leaf(Node::List(Vec::new()))?,
                b'}' => self.leaf(Node::Dict(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = vec![0; n];
                    for i in (0..n).rev() {
                        items[i] = self.pop()?;
                    }
                    self.tuple(items)?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.container(Node::List(items.clone()), &items)?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return self.err("DICT with an odd number of objects");
                    }
                    let kv = items.chunks_exact(2).map(|c| (c[0], c[1])).collect();
                    self.container(Node::Dict(kv), &items)?
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top()?;
                    self.append(target, vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.append(target, items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?;
                    self.set_items(target, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.set_items(target, items)?
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let class = self.line()?;
                    self.global(module, class)?
                }
                0x93 => {
                    let class = self.pop()?;
                    let module = self.pop()?;
                    match (&self.nodes[module as usize], &self.nodes[class as usize]) {
                        (Node::Str(m), Node::Str(c)) => {
                            let (m, c) = (m.to_string(), c.to_string());
                            self.global(m, c)?
                        }
                        _ => return self.err("STACK_GLOBAL without two strings"),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    if !matches!(self.nodes[args as usize], Node::Tuple(_)) {
                        return self.err("REDUCE/NEWOBJ arguments that are not a tuple");
                    }
                    let d = self.max_depth(&[func, args]) + 1;
                    let call = Call {
                        func,
                        args,
                        items: Vec::new(),
                        appended: Vec::new(),
                        state: None,
                    };
                    self.push_node(Node::Call(Box::new(call)), d)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.grow(target, &[state])?;
                    match &mut self.nodes[target as usize] {
                        Node::Call(c) => c.state = Some(state),
                        _ => return self.err("BUILD on something that is not an object"),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let d = self.max_depth(&[pid]) + 1;
                    self.push_node(Node::PersId(pid), d)?;
                }
                other => {
                    return self.err(format!(
                        "{}, which torch.save does not write; not read",
                        name(other)
                    ))
                }
            }
        }
    }
}

/// Parses `data`; `allowed(module, class)` says which classes a `GLOBAL` may name (any other is
/// refused at once, by name).
pub(super) fn parse(data: &[u8], allowed: &dyn Fn(&str, &str) -> bool) -> Result<Pickle, String> {
    let mut p = Parser {
        data,
        pos: 0,
        nodes: Vec::new(),
        depth: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
        allowed,
    };
    let root = p.run()?;
    Ok(Pickle {
        nodes: p.nodes,
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &str, _: &str) -> bool {
        true
    }

    #[test]
    fn memo_references_are_shared_not_copied() {
        // EMPTY_TUPLE, BINPUT 0, then 40 x (BINGET 0, BINGET 0, TUPLE2, BINPUT 0), STOP.
        let mut d = vec![0x80, 2, b')', b'q', 0];
        for _ in 0..40 {
            d.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        d.push(b'.');
        let p = parse(&d, &any).unwrap();
        assert_eq!(p.nodes.len(), 41);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut d = vec![0x80, 2, b')'];
        d.extend(std::iter::repeat_n(0x85, 200));
        d.push(b'.');
        let e = parse(&d, &any).unwrap_err();
        assert!(e.contains("nested more than 100 deep"), "{e}");
    }

    #[test]
    fn declared_lengths_are_checked_before_allocating() {
        let mut d = vec![0x80, 2, b'X'];
        d.extend(0xFFFF_FFF0u32.to_le_bytes());
        d.extend(b"abc");
        let e = parse(&d, &any).unwrap_err();
        assert!(e.contains("declares 4294967280 bytes, 3 left"), "{e}");
    }

    #[test]
    fn a_list_appended_to_itself_is_fine() {
        // EMPTY_LIST, BINPUT 0, BINGET 0, APPEND, STOP.
        let d = [0x80, 2, b']', b'q', 0, b'h', 0, b'a', b'.'];
        let p = parse(&d, &any).unwrap();
        assert!(matches!(p.node(p.root), Node::List(v) if v == &[p.root]));
    }

    #[test]
    fn long1_is_twos_complement() {
        for (bytes, want) in [
            (&[0xff][..], -1i64),
            (&[0x00, 0x80], -32768),
            (&[0xff, 0x00], 255),
            (&[], 0),
        ] {
            let mut d = vec![0x8a, bytes.len() as u8];
            d.extend(bytes);
            d.push(b'.');
            let p = parse(&d, &any).unwrap();
            assert_eq!(p.int(p.root), Some(want), "{bytes:?}");
        }
    }
}
