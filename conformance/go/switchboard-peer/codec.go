package main

import (
	"errors"
	"fmt"

	"github.com/golang/protobuf/proto"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

// The messages of proto/user.proto that the peer uses, encoded by hand with protowire: Debian
// ships no protoc-gen-go-grpc for grpc-go 1.33, and seven small messages do not need one.
type wireMessage interface {
	marshal() []byte
	unmarshal(b []byte) error
}

type getUserInfoRequest struct{ id int64 }

type userInfo struct {
	id       int64
	username string
	instance string
}

type watchEventsRequest struct {
	id         int64
	count      uint32
	intervalMs uint32
}

type event struct {
	seq      uint64
	instance string
}

type chunk struct{ data []byte }

type uploadSummary struct {
	chunks   uint64
	bytes    uint64
	instance string
}

type chatMessage struct {
	seq      uint64
	text     string
	instance string
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// fields calls visit with each field's number and its varint or bytes value, skipping fields of
// other wire types as a protobuf parser does.
func fields(b []byte, visit func(num protowire.Number, v uint64, s []byte)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			visit(num, v, nil)
			b = b[n:]
		case protowire.BytesType:
			s, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			visit(num, 0, s)
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}

func (m *getUserInfoRequest) marshal() []byte { return appendVarint(nil, 1, uint64(m.id)) }
func (m *getUserInfoRequest) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, v uint64, _ []byte) {
		if num == 1 {
			m.id = int64(v)
		}
	})
}

func (m *userInfo) marshal() []byte {
	b := appendVarint(nil, 1, uint64(m.id))
	b = appendString(b, 2, m.username)
	return appendString(b, 3, m.instance)
}
func (m *userInfo) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, v uint64, s []byte) {
		switch num {
		case 1:
			m.id = int64(v)
		case 2:
			m.username = string(s)
		case 3:
			m.instance = string(s)
		}
	})
}

func (m *watchEventsRequest) marshal() []byte {
	b := appendVarint(nil, 1, uint64(m.id))
	b = appendVarint(b, 2, uint64(m.count))
	return appendVarint(b, 3, uint64(m.intervalMs))
}
func (m *watchEventsRequest) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, v uint64, _ []byte) {
		switch num {
		case 1:
			m.id = int64(v)
		case 2:
			m.count = uint32(v)
		case 3:
			m.intervalMs = uint32(v)
		}
	})
}

func (m *event) marshal() []byte {
	b := appendVarint(nil, 1, m.seq)
	return appendString(b, 2, m.instance)
}
func (m *event) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, v uint64, s []byte) {
		switch num {
		case 1:
			m.seq = v
		case 2:
			m.instance = string(s)
		}
	})
}

func (m *chunk) marshal() []byte { return appendBytes(nil, 1, m.data) }
func (m *chunk) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, _ uint64, s []byte) {
		if num == 1 {
			// s points into the received frame: keep a copy.
			m.data = append([]byte(nil), s...)
		}
	})
}

func (m *uploadSummary) marshal() []byte {
	b := appendVarint(nil, 1, m.chunks)
	b = appendVarint(b, 2, m.bytes)
	return appendString(b, 3, m.instance)
}
func (m *uploadSummary) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, v uint64, s []byte) {
		switch num {
		case 1:
			m.chunks = v
		case 2:
			m.bytes = v
		case 3:
			m.instance = string(s)
		}
	})
}

func (m *chatMessage) marshal() []byte {
	b := appendVarint(nil, 1, m.seq)
	b = appendString(b, 2, m.text)
	return appendString(b, 3, m.instance)
}
func (m *chatMessage) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, v uint64, s []byte) {
		switch num {
		case 1:
			m.seq = v
		case 2:
			m.text = string(s)
		case 3:
			m.instance = string(s)
		}
	})
}

// codec is grpc-go's "proto" codec for generated messages (the health service) and protowire
// for the messages above.
type codec struct{}

func (codec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case wireMessage:
		return m.marshal(), nil
	case proto.Message:
		return proto.Marshal(m)
	}
	return nil, fmt.Errorf("cannot marshal %T", v)
}

func (codec) Unmarshal(data []byte, v interface{}) error {
	switch m := v.(type) {
	case wireMessage:
		return m.unmarshal(data)
	case proto.Message:
		return proto.Unmarshal(data, m)
	}
	return errors.New("cannot unmarshal into this type")
}

func (codec) Name() string { return "proto" }

func init() { encoding.RegisterCodec(codec{}) }
