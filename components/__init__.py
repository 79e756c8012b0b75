"""One ComponentResource per area of the stack; each takes a frozen, keyword-only Args dataclass."""
