package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// fieldNames are Record's JSON names, the only keys Decode accepts.
var fieldNames = func() map[string]bool {
	names := map[string]bool{}
	t := reflect.TypeFor[Record]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		names[name] = true
	}
	return names
}()

// Decode reads one record strictly, as the publisher accepts it from serve:
// one JSON object of at most MaxLine bytes with Record's fields spelt
// exactly (encoding/json alone would take "Client" for "client", and the
// last of two "client"s), nothing after it, and a record that Validate
// accepts.
func Decode(data []byte) (Record, error) {
	var r Record
	if len(data) > MaxLine {
		return r, fmt.Errorf("the record is %d bytes, more than %d", len(data), MaxLine)
	}
	if err := checkKeys(data); err != nil {
		return r, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("the record is not valid: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Record{}, errors.New("the record has data after its end")
	}
	if err := r.Validate(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// checkKeys refuses an object whose keys are not Record's exact names, or
// name one twice.
func checkKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("the record is not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("the record is not valid: %w", err)
		}
		key, _ := tok.(string)
		switch {
		case !fieldNames[key]:
			return fmt.Errorf("the record has an unknown field %q", clip(key))
		case seen[key]:
			return fmt.Errorf("the record has the field %q twice", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("the record is not valid: %w", err)
		}
	}
	return nil
}
