-- phase: expand
CREATE TABLE orders (id integer PRIMARY KEY, legacy_note text);
