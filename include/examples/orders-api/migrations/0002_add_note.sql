-- phase: expand
-- The new column beside the old one: the version before keeps reading legacy_note.
ALTER TABLE orders ADD COLUMN note text;
UPDATE orders SET note = legacy_note;
