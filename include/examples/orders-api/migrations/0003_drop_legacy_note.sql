-- phase: contract
-- Runs only once no environment runs a version that still reads legacy_note (its schema.yaml
-- said max: 2); releasetrain refuses it before that, naming the environment and the version.
ALTER TABLE orders DROP COLUMN legacy_note;
