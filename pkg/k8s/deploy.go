package k8s

import (
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ExpandDeployment returns the pods a Deployment's ReplicaSet would create:
// the ReplicaSet is named <deployment>-<pod-template-hash> (PodTemplateHash
// with the Deployment's status.collisionCount), each pod
// <replicaset>-<5 characters> (see podSuffix: deterministic where the API
// server's are random), labelled with the template's labels plus
// pod-template-hash, in the Deployment's namespace, spec copied from the
// template. taken holds "namespace/name" of pods that exist; the new names
// are added to it.
func ExpandDeployment(d *appsv1.Deployment, taken map[string]bool) []*corev1.Pod {
	replicas := int32(1)
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	hash := PodTemplateHash(&d.Spec.Template, d.Status.CollisionCount)
	rs := d.Name + "-" + hash
	var pods []*corev1.Pod
	for i := 0; i < int(replicas); i++ {
		var name string
		for attempt := 0; ; attempt++ {
			name = generatedName(rs+"-", podSuffix(rs, i, attempt))
			if !taken[d.Namespace+"/"+name] {
				break
			}
		}
		taken[d.Namespace+"/"+name] = true
		p := &corev1.Pod{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Namespace:   d.Namespace,
				Labels:      map[string]string{},
				Annotations: d.Spec.Template.Annotations,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs,
				}},
			},
			Spec: *d.Spec.Template.Spec.DeepCopy(),
		}
		for k, v := range d.Spec.Template.Labels {
			p.Labels[k] = v
		}
		p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
		pods = append(pods, p)
	}
	return pods
}

// Schedule sets spec.nodeName on every pod that has none, in order: each
// goes to the node with the fewest pods (counting existing, a map of node
// name to pods already there, and the pods of this call that already have
// a node), ties broken by node name. It is deterministic, so the same apply
// always lands the same way; Deployment replicas spread evenly. Pods that
// name a node keep it.
func Schedule(pods []*corev1.Pod, nodes []string, existing map[string]int) error {
	count := map[string]int{}
	for n, c := range existing {
		count[n] = c
	}
	for _, p := range pods {
		if p.Spec.NodeName != "" {
			count[p.Spec.NodeName]++
		}
	}
	sorted := append([]string(nil), nodes...)
	sort.Strings(sorted)
	for _, p := range pods {
		if p.Spec.NodeName != "" {
			continue
		}
		if len(sorted) == 0 {
			return fmt.Errorf("pod %s/%s has no spec.nodeName and the lab has no node to schedule it on", p.Namespace, p.Name)
		}
		best := sorted[0]
		for _, n := range sorted[1:] {
			if count[n] < count[best] {
				best = n
			}
		}
		p.Spec.NodeName = best
		count[best]++
	}
	return nil
}
