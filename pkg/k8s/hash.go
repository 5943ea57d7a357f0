package k8s

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/dump"
)

// PodTemplateHash computes the pod-template-hash label value of a
// Deployment's ReplicaSet the way the deployment controller does
// (kubernetes/kubernetes pkg/controller/controller_utils.go ComputeHash
// with pkg/util/hash DeepHashObject): FNV-32a over the spew dump of the
// template (k8s.io/utils/dump.ForHash), then the collision count as 8
// little-endian bytes when given, then the decimal of the sum encoded with
// rand.SafeEncodeString.
//
// A real cluster hashes the template after the API server has applied its
// defaults (imagePullPolicy, terminationMessagePath, restartPolicy, ...),
// which klab does not apply, so the value is computed the same way but from
// the template as written; it is stable for a given manifest.
func PodTemplateHash(template *corev1.PodTemplateSpec, collisionCount *int32) string {
	h := fnv.New32a()
	_, _ = io.WriteString(h, dump.ForHash(*template))
	if collisionCount != nil {
		b := make([]byte, 8)
		binary.LittleEndian.PutUint32(b, uint32(*collisionCount))
		_, _ = h.Write(b)
	}
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32()))
}

// alphanums is the alphabet of k8s.io/apimachinery/pkg/util/rand.String
// (no vowels, no 0/1/3), used for generated name suffixes.
const alphanums = "bcdfghjklmnpqrstvwxz2456789"

// maxGeneratedNameLength mirrors apiserver's names.SimpleNameGenerator:
// a generateName base is cut to 63-5 characters before the suffix.
const maxGeneratedNameLength = 63 - 5

// podSuffix is the deterministic stand-in for the 5 random characters the
// API server appends to a generateName (names.SimpleNameGenerator uses
// rand.String(5)): FNV-64a of "<replicaset>/<ordinal>/<attempt>", taken 5
// bits at a time, each index taken modulo the 27-letter alphabet. The same
// manifest always gives the same pod names; attempt is bumped on the (rare)
// clash with an existing name.
func podSuffix(rsName string, ordinal, attempt int) string {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%d/%d", rsName, ordinal, attempt)
	v := h.Sum64()
	b := make([]byte, 5)
	for i := range b {
		b[i] = alphanums[int(v&31)%len(alphanums)]
		v >>= 5
	}
	return string(b)
}

// generatedName is base + suffix with base cut as the API server cuts it.
func generatedName(base, suffix string) string {
	if len(base) > maxGeneratedNameLength {
		base = base[:maxGeneratedNameLength]
	}
	return base + suffix
}
